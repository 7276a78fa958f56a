"""Where output files live. One small interface (``Storage``) and its backends."""

"""repligate: a self-hosted, Replicate-compatible predictions server."""

__version__ = "0.1.0"

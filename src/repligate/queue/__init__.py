"""How a created prediction reaches a worker: in-process threads by default."""

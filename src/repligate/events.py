"""What a runner reports while it runs a prediction.

Runners never touch the database or storage: they call ``RunContext.emit`` with a Log, a
Progress (and a FrameProgress for animations) or an Output, and return their output with
``OutputFile`` values where files go; the execution folds all of it into the prediction
(``transitions.py``).

Two ways to give the output:
- return it (one value, a list or a dict, with ``OutputFile`` values in place);
- or emit each ``Output`` as soon as it exists and return None: the prediction's output
  is then the list of what was emitted, and it grows while the prediction runs (models
  whose output schema is an iterator, ``x-cog-array-type: iterator``). A canceled or
  failed prediction keeps what it had emitted, as on Replicate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Log:
    """One line for the prediction's ``logs``."""

    line: str


@dataclass(frozen=True)
class Progress:
    """A denoising step finished; rendered as a tqdm-style line in ``logs``."""

    step: int
    total: int


@dataclass(frozen=True)
class FrameProgress:
    """An animation's frame is done: ``frame`` of ``total`` (the prediction's
    ``progress.frame``). Adds no log line; runners log their own frame lines."""

    frame: int
    total: int


@dataclass(frozen=True)
class OutputFile:
    """A file the model produced: bytes already encoded, named as the original names it."""

    name: str
    data: bytes
    content_type: str


@dataclass(frozen=True)
class Output:
    """One more item of the output, produced now: a file or any JSON value."""

    value: Any


Event = Log | Progress | FrameProgress | Output


class Canceled(Exception):
    """Raised inside a runner between steps when the prediction was canceled."""

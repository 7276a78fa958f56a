"""What a runner reports while it runs a prediction.

Runners never touch the database or storage: they call ``RunContext.emit`` with a Log or
a Progress, and return their output with ``OutputFile`` values where files go; the
execution folds both into the prediction row.
"""

from __future__ import annotations

from dataclasses import dataclass


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
class OutputFile:
    """A file the model produced: bytes already encoded, named as the original names it."""

    name: str
    data: bytes
    content_type: str


Event = Log | Progress


class Canceled(Exception):
    """Raised inside a runner between steps when the prediction was canceled."""

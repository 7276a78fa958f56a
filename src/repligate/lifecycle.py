"""The prediction lifecycle: statuses, the allowed transitions, and "terminal is final".

Every status write in the code base goes through ``transitions.Transitions``, which asks
this module first. The store applies a
transition as a compare-and-set (``UPDATE ... WHERE status IN sources_of(new)``) so two
processes racing (a cancel and a finishing worker) cannot both win.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    STARTING = "starting"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL: frozenset[Status] = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELED})

# from -> the statuses it may move to. Terminal statuses have no way out.
_ALLOWED: dict[Status, frozenset[Status]] = {
    Status.STARTING: frozenset({Status.PROCESSING, Status.FAILED, Status.CANCELED}),
    # processing -> starting: a worker that is shutting down hands its prediction back to
    # the queue (it runs again from the start after the restart).
    Status.PROCESSING: frozenset(
        {Status.STARTING, Status.SUCCEEDED, Status.FAILED, Status.CANCELED}
    ),
    Status.SUCCEEDED: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELED: frozenset(),
}


class InvalidTransition(Exception):
    """A status change the lifecycle does not allow (an infrastructure bug, not user error)."""


def can_move(current: Status, new: Status) -> bool:
    return new in _ALLOWED[current]


def check(current: Status, new: Status) -> None:
    if not can_move(current, new):
        raise InvalidTransition(f"a prediction cannot move from {current} to {new}")


def sources_of(new: Status) -> frozenset[Status]:
    """The statuses from which ``new`` may be reached: what a compare-and-set accepts."""
    return frozenset(s for s, targets in _ALLOWED.items() if new in targets)

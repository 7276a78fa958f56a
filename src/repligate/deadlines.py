"""Prediction deadlines (``Cancel-After``): parsing the header, and canceling what runs
past its deadline.

The header takes Replicate's duration syntax: a bare number of seconds, or numbers with
units ``ms``, ``s``, ``m``, ``h`` (combinable: ``1h30m45s``, ``1.5m``), at least 5
seconds. The deadline (creation time + duration) is stored with the prediction and shown
as its ``deadline``.

``DeadlineWatcher`` keeps the deadlines of unfinished predictions this process knows (the
ones it created, and after a restart every unfinished one with a deadline) and cancels
each that is still unfinished when its time comes, through the transition point (a
prediction that finished first stays as it finished). Replicate calls one that had not
started ``aborted``; the official client knows no such status, so it is ``canceled``
here, with a log line saying why.
"""

from __future__ import annotations

import heapq
import logging
import re
import threading
from datetime import datetime

from repligate.bus import EventKind, PredictionEvent
from repligate.clock import Clock
from repligate.errors import InvalidRequest
from repligate.lifecycle import Status
from repligate.queue.base import Queue
from repligate.transitions import Transitions

log = logging.getLogger(__name__)

MIN_SECONDS = 5.0
# A year: longer is surely a mistake (and would overflow nothing, but helps no one).
MAX_SECONDS = 365 * 24 * 3600.0
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
CANCELED_NOTE = "Canceled: the deadline set by Cancel-After ({deadline}) passed.\n"


def parse_cancel_after(value: str) -> float:
    """Seconds from a ``Cancel-After`` value; InvalidRequest (422) when it is not one."""
    text = value.strip().lower()
    if _NUMBER.fullmatch(text):
        seconds = float(text)
    else:
        parts = _PART.findall(text)
        if not text or "".join(n + u for n, u in parts) != text:
            raise InvalidRequest(
                f"Cancel-After must be a duration such as 30s, 5m or 1h30m (got {value!r})."
            )
        seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if seconds < MIN_SECONDS:
        raise InvalidRequest(f"Cancel-After must be at least 5 seconds (got {value!r}).")
    if seconds > MAX_SECONDS:
        raise InvalidRequest(f"Cancel-After must be at most a year (got {value!r}).")
    return seconds


class DeadlineWatcher:
    def __init__(self, transitions: Transitions, queue: Queue, clock: Clock) -> None:
        self._transitions = transitions
        self._queue = queue
        self._clock = clock
        self._heap: list[tuple[datetime, str]] = []
        self._watched: dict[str, datetime] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, prediction_id: str, deadline: datetime) -> None:
        with self._lock:
            self._watched[prediction_id] = deadline
            heapq.heappush(self._heap, (deadline, prediction_id))
        self._wake.set()

    def on_event(self, event: PredictionEvent) -> None:
        """A bus subscriber: a prediction that completed needs no watching any more."""
        if event.kind is not EventKind.COMPLETED:
            return
        with self._lock:
            if self._watched.pop(event.prediction.id, None) is None:
                return
            # Finished ones leave the heap lazily; rebuilt when they are most of it.
            if len(self._heap) > 2 * len(self._watched) + 1000:
                self._heap = [(d, p) for d, p in self._heap if p in self._watched]
                heapq.heapify(self._heap)

    def expire_due(self) -> list[str]:
        """Cancel every watched prediction whose deadline has passed; returns the ids
        canceled now (not those that had finished already)."""
        now = self._clock.now()
        due = []
        with self._lock:
            while self._heap and self._heap[0][0] <= now:
                deadline, prediction_id = heapq.heappop(self._heap)
                if self._watched.get(prediction_id) == deadline:
                    del self._watched[prediction_id]
                    due.append((deadline, prediction_id))
        canceled = []
        for deadline, prediction_id in due:
            note = CANCELED_NOTE.format(deadline=deadline.isoformat(timespec="seconds"))
            ended = self._transitions.finish(
                prediction_id, Status.CANCELED, keep_output=True, append_logs=note
            )
            if ended is not None:
                self._queue.cancel(prediction_id)  # stop its worker at the next step
                canceled.append(prediction_id)
        return canceled

    def _next_wait(self) -> float:
        with self._lock:
            if not self._heap:
                return 1.0
            remaining = (self._heap[0][0] - self._clock.now()).total_seconds()
        return min(max(remaining, 0.0), 1.0)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="repligate-deadlines", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._next_wait())
            self._wake.clear()
            try:
                self.expire_due()
            except Exception:
                log.exception("canceling predictions past their deadline failed")

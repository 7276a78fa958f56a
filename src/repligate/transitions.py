"""The one place where a prediction changes: status moves, log flushes, output updates.

Each method does the compare-and-set in the store (which adds the change's webhook
delivery to the outbox in the same transaction), then publishes one typed event on the
bus with the prediction as it now stands. A method returns that prediction, or None when
the write did not apply (the prediction had moved on: canceled elsewhere, finished, or
claimed by another worker). Nothing else in the code base writes a prediction after it
is inserted.

Ordering: the write and its publish happen under a lock per prediction (striped), so
one prediction's events reach subscribers in the order of its writes, whichever
threads race (a worker flushing logs, a request canceling it).
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from repligate import lifecycle
from repligate.bus import EventBus, EventKind, PredictionEvent
from repligate.clock import Clock
from repligate.lifecycle import Status
from repligate.records import Prediction, RunProgress
from repligate.store import db, leases
from repligate.store import predictions as store

log = logging.getLogger(__name__)

_STRIPES = 64
# How often a move retries when another writer changed the status between its read and
# its compare-and-set (the move is then re-checked against the new status).
_CAS_ATTEMPTS = 5

RECORDING_FAILED = (
    "The prediction finished, but its result could not be recorded ({reason}). Run it again."
)


class Transitions:
    def __init__(self, sessions: sessionmaker[Session], bus: EventBus, clock: Clock) -> None:
        self._sessions = sessions
        self._bus = bus
        self._clock = clock
        self._locks = [threading.Lock() for _ in range(_STRIPES)]

    def _lock(self, prediction_id: str) -> threading.Lock:
        return self._locks[zlib.crc32(prediction_id.encode()) % _STRIPES]

    def _publish(self, kind: EventKind, prediction: Prediction | None) -> Prediction | None:
        if prediction is not None:
            self._bus.publish(PredictionEvent(kind, prediction))
        return prediction

    # -- status moves ------------------------------------------------------------------

    def claim(self, prediction_id: str, owner: str, lease_seconds: float) -> Prediction | None:
        """A worker claims a queued prediction under a lease it then renews
        (``renew_leases``): only one claim wins, and a prediction canceled while queued
        stays canceled."""
        now = self._clock.now()
        until = now + timedelta(seconds=lease_seconds)
        with self._lock(prediction_id), db.connect(self._sessions) as session:
            claimed = leases.claim(session, prediction_id, owner=owner, now=now, until=until)
            return self._publish(EventKind.STARTED, claimed)

    def renew_leases(
        self, owner: str, prediction_ids: Collection[str], lease_seconds: float
    ) -> set[str]:
        """Extend a worker's leases; the ids it still holds. No event: nothing a reader
        sees changed."""
        until = self._clock.now() + timedelta(seconds=lease_seconds)
        with db.connect(self._sessions) as session:
            return leases.renew(session, owner, prediction_ids, until)

    def requeue_lost(self, prediction_id: str, note: str) -> Prediction | None:
        """A prediction whose worker's lease ran out goes back to the queue, to run again
        from the start (its partial output dropped). Applies only while the lease is
        still expired: a worker that renewed meanwhile keeps it."""
        return self._back_to_queue(prediction_id, note, lease_expired_before=self._clock.now())

    def fail_lost(self, prediction_id: str, error: str) -> Prediction | None:
        """Fail a prediction whose worker's lease ran out (it had its runs), only while
        the lease is still expired."""
        return self._move(
            prediction_id,
            Status.FAILED,
            {"error": error},
            lease_expired_before=self._clock.now(),
        )

    def start(self, prediction_id: str) -> Prediction | None:
        """A worker claims a queued prediction: only one claim wins, and a prediction
        canceled while queued stays canceled."""
        now = self._clock.now()
        with self._lock(prediction_id), db.connect(self._sessions) as session:
            claimed = store.move(
                session,
                prediction_id,
                Status.PROCESSING,
                expected=Status.STARTING,
                started_at=now,
                webhook_event=EventKind.STARTED.value,
                now=now,
            )
            return self._publish(EventKind.STARTED, claimed)

    def finish(
        self,
        prediction_id: str,
        status: Status,
        *,
        error: str | None = None,
        output: Any = None,
        keep_output: bool = False,
        logs: str | None = None,
        append_logs: str | None = None,
        claimed: Prediction | None = None,
        predict_time: float | None = None,
        progress: RunProgress | None = None,
        owner: str | None = None,
    ) -> Prediction | None:
        """Move to a terminal status; ``completed`` is published once, by the winner.

        ``predict_time``: the run's own time where it ran elsewhere (a relayed prediction
        reports upstream's); else it is measured from ``started_at``.

        ``keep_output`` leaves the output the prediction already has (a canceled or failed
        prediction keeps what it produced). ``append_logs`` adds the last log lines in the
        same write. ``claimed``, the prediction as ``start`` returned it, spares the read
        before the compare-and-set (it is read only if the status moved since).
        ``owner``: a worker's write, applied only while it holds the lease. If the
        write itself fails (a database error), a minimal failed write still ends the
        prediction, so none is left running.
        """
        if not status.is_terminal:
            raise lifecycle.InvalidTransition(f"{status} is not a terminal status")
        fields: dict[str, Any] = {"error": error}
        if not keep_output:
            fields["output"] = output
        if logs is not None:
            fields["logs"] = logs
        if predict_time is not None:
            fields["predict_time"] = predict_time
        if progress is not None:
            fields["progress"] = progress
        try:
            return self._move(prediction_id, status, fields, append_logs, claimed, owner=owner)
        except Exception as exc:
            if status is Status.FAILED and set(fields) == {"error"}:
                raise
            log.exception("recording the result of %s failed; failing it instead", prediction_id)
            reason = type(exc).__name__
            return self._move(
                prediction_id,
                Status.FAILED,
                {"error": RECORDING_FAILED.format(reason=reason)},
                owner=owner,
            )

    def cancel(self, prediction_id: str, owner: str | None = None) -> Prediction | None:
        return self.finish(prediction_id, Status.CANCELED, keep_output=True, owner=owner)

    def fail(self, prediction_id: str, error: str, owner: str | None = None) -> Prediction | None:
        return self.finish(prediction_id, Status.FAILED, error=error, keep_output=True, owner=owner)

    def hand_back(
        self, prediction_id: str, note: str, owner: str | None = None
    ) -> Prediction | None:
        """A worker that is stopping returns its running prediction to the queue: it
        will run again from the start, so its partial output is dropped."""
        return self._back_to_queue(prediction_id, note, owner=owner)

    def _back_to_queue(
        self,
        prediction_id: str,
        note: str,
        *,
        owner: str | None = None,
        lease_expired_before: datetime | None = None,
    ) -> Prediction | None:
        """``processing`` -> ``starting`` with a line in the logs, its run's traces and
        lease cleared, under the given condition on the lease."""
        with self._lock(prediction_id), db.connect(self._sessions) as session:
            return store.move(
                session,
                prediction_id,
                Status.STARTING,
                expected=Status.PROCESSING,
                owner=owner,
                lease_expired_before=lease_expired_before,
                append_logs=note + "\n",
                started_at=None,
                output=None,
                progress=None,
                lease_owner=None,
                lease_expires_at=None,
            )

    def _move(
        self,
        prediction_id: str,
        status: Status,
        fields: dict[str, Any],
        append_logs: str | None = None,
        known: Prediction | None = None,
        *,
        owner: str | None = None,
        lease_expired_before: datetime | None = None,
    ) -> Prediction | None:
        with self._lock(prediction_id), db.connect(self._sessions) as session:
            current = known
            for _ in range(_CAS_ATTEMPTS):
                if current is None:
                    current = store.get(session, prediction_id)
                if current is None or not lifecycle.can_move(current.status, status):
                    return None
                now = self._clock.now()
                timed = {"predict_time": _seconds(current.started_at, now), **fields}
                moved = store.move(
                    session,
                    prediction_id,
                    status,
                    expected=current.status,
                    completed_at=now,
                    total_time=_seconds(current.created_at, now),
                    append_logs=append_logs,
                    webhook_event=EventKind.COMPLETED.value,
                    now=now,
                    owner=owner,
                    lease_expired_before=lease_expired_before,
                    **timed,
                )
                if moved is not None:
                    return self._publish(EventKind.COMPLETED, moved)
                if owner is not None or lease_expired_before is not None:
                    return None  # the lease moved on: no retry can apply
                current = None  # it moved on meanwhile: read it again
            return None

    # -- while it runs ---------------------------------------------------------------

    def append_logs(
        self,
        prediction_id: str,
        text: str,
        progress: RunProgress | None = None,
        owner: str | None = None,
    ) -> Prediction | None:
        """Add log lines and, when given, the run's progress: one write, one event."""
        with self._lock(prediction_id), db.connect(self._sessions) as session:
            now = self._clock.now()
            moved = store.append_logs(
                session, prediction_id, text, now=now, progress=progress, owner=owner
            )
            return self._publish(EventKind.LOGS, moved)

    def set_output(
        self, prediction_id: str, output: Any, owner: str | None = None
    ) -> Prediction | None:
        with self._lock(prediction_id), db.connect(self._sessions) as session:
            moved = store.set_output(
                session, prediction_id, output, now=self._clock.now(), owner=owner
            )
            return self._publish(EventKind.OUTPUT, moved)

    # -- after it ended -------------------------------------------------------------

    def remove_data(self, prediction_id: str) -> Prediction | None:
        """Retention (retention.py): clear a finished prediction's input, output and logs
        and mark it ``data_removed``; its status and times stay. Returns it as it was
        before (so its output files can be deleted), or None if there was nothing to do.
        No event: nothing about the prediction's run changed."""
        with self._lock(prediction_id), db.connect(self._sessions) as session:
            return store.remove_data(session, prediction_id)


def _seconds(start: datetime | None, end: datetime) -> float | None:
    return (end - start).total_seconds() if start is not None else None

"""Leases on running predictions, so a prediction whose worker died is run again (or,
after ``max_attempts`` runs, failed) instead of staying ``processing`` forever.

- Worker side (``LeaseKeeper``): a worker claims a prediction under a lease
  (``Transitions.claim``) and one thread per process renews the leases of everything it
  runs, every third of ``lease_seconds``. A lease it finds lost (taken over after it ran
  out: the process froze, or the database was out of reach for longer than the lease)
  raises the prediction's cancel flag: the run stops at its next step, and its writes,
  which apply only under its own lease, change nothing more.
- Reaper (``LostWorkReaper``), in the API processes, every half lease: predictions whose
  lease ran out go back to the queue with a note in their logs, or fail saying why.
  Only those: a prediction whose worker is alive keeps renewing its lease, whichever
  host it runs on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from repligate.clock import Clock
from repligate.queue.base import CancelFlags, Queue
from repligate.storage.base import Storage, keys_in
from repligate.store import db
from repligate.store import leases as store
from repligate.transitions import Transitions

log = logging.getLogger(__name__)

RERUN_NOTE = (
    "The worker running this prediction stopped responding (its lease ran out); "
    "it was queued again (run {next} of at most {most})."
)
LOST_ERROR = (
    "The worker running this prediction stopped responding, {runs} time(s); it is not "
    "run again. Run it again, or look at the worker's logs (out of memory?)."
)


def worker_identity() -> str:
    """Names this process as a lease owner: host, pid, and a random part (a pid is
    reused after a restart; a lease must not be)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class LeaseKeeper:
    def __init__(
        self,
        transitions: Transitions,
        flags: CancelFlags,
        *,
        lease_seconds: float,
        owner: str | None = None,
    ) -> None:
        self.owner = owner or worker_identity()
        self.lease_seconds = lease_seconds
        self._transitions = transitions
        self._flags = flags
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, prediction_id: str) -> None:
        with self._lock:
            self._held.add(prediction_id)
        self._start()

    def release(self, prediction_id: str) -> None:
        with self._lock:
            self._held.discard(prediction_id)

    def held(self) -> set[str]:
        with self._lock:
            return set(self._held)

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._renew_forever, name="repligate-leases", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(5)

    def _renew_forever(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                self.renew()
            except Exception:  # the database is out of reach: try again next time
                log.warning("could not renew the leases of %s", self.owner, exc_info=True)

    def renew(self) -> None:
        wanted = self.held()
        if not wanted:
            return
        kept = self._transitions.renew_leases(self.owner, wanted, self.lease_seconds)
        for prediction_id in wanted - kept:
            if prediction_id in self.held():  # not just finished: the lease was lost
                log.warning("lost the lease on %s; stopping its run", prediction_id)
                self._flags.set(prediction_id)


class LostWorkReaper:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        transitions: Transitions,
        queue: Queue,
        storage: Storage,
        clock: Clock,
        max_attempts: int,
    ) -> None:
        self._sessions = sessions
        self._transitions = transitions
        self._queue = queue
        self._storage = storage
        self._clock = clock
        self._max_attempts = max_attempts
        # Called for each prediction queued again (tests and metrics listen).
        self.on_requeue: Callable[[str], None] | None = None

    def reap(self) -> tuple[int, int]:
        """Queue again, or fail, every prediction whose lease ran out. Several processes
        may reap at once: each move is a compare-and-set on the expired lease, so one
        wins. Returns (requeued, failed)."""
        with db.connect(self._sessions) as session:
            lost = store.expired(session, self._clock.now())
        requeued = failed = 0
        for prediction in lost:
            if prediction.attempts >= self._max_attempts:
                error = LOST_ERROR.format(runs=prediction.attempts)
                if self._transitions.fail_lost(prediction.id, error) is not None:
                    failed += 1
                continue
            note = RERUN_NOTE.format(next=prediction.attempts + 1, most=self._max_attempts)
            if self._transitions.requeue_lost(prediction.id, note) is None:
                continue
            for key in keys_in(prediction.output):  # the lost run's files belong to nobody
                self._storage.delete(key)
            self._queue.submit(prediction.id, prediction.model)
            requeued += 1
            if self.on_requeue is not None:
                self.on_requeue(prediction.id)
        if requeued or failed:
            log.warning("lost workers: %d predictions queued again, %d failed", requeued, failed)
        return requeued, failed

    async def run_forever(self, interval: float) -> None:
        """Reap now and every ``interval`` seconds (in a thread: the statements block)."""
        while True:
            try:
                await asyncio.to_thread(self.reap)
            except Exception:  # the database is out of reach: try again next time
                log.warning("reaping lost predictions failed", exc_info=True)
            await asyncio.sleep(interval)

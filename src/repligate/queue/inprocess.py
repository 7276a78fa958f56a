"""The default queue: long-lived worker threads in this process, a few per device.

Each device gets its own thread(s) that live as long as the server: torch gives every
calling thread its own OpenMP team, so calling a pipeline from a new thread per request
makes the teams fight for the cores (research/serving-overhead.md, lesson 1).

Stopping: queued predictions are not run (they stay ``starting`` in the store and are
queued again at the next start); running ones get a grace period, then are told to hand
their prediction back to the queue, which they do at their next step.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from repligate.queue.base import CancelFlags

log = logging.getLogger(__name__)
_STOP = object()
# After the grace period, how long a handed-back prediction may take to reach its next
# step (where it stops) before the stop gives up waiting for it.
_HAND_BACK_SECONDS = 10.0


class InProcessQueue:
    durable = False

    def __init__(
        self,
        execute: Callable[[str], None],
        flags: CancelFlags,
        *,
        devices: int = 1,
        concurrency_per_device: int = 1,
        grace_seconds: float = 30.0,
    ) -> None:
        self._execute = execute
        self._flags = flags
        self._jobs: queue.Queue[object] = queue.Queue()
        self._thread_count = devices * concurrency_per_device
        self._threads: list[threading.Thread] = []
        self._grace = grace_seconds
        self._stopping = threading.Event()
        self._running: dict[str, str] = {}  # thread name -> prediction id
        self._lock = threading.Lock()

    def start(self) -> None:
        if self._threads:
            return
        self._stopping.clear()
        for index in range(self._thread_count):
            thread = threading.Thread(
                target=self._work, name=f"repligate-worker-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Take no more jobs; give the running predictions the grace period, then hand
        them back. Blocking: call it from a thread, not the event loop."""
        self._stopping.set()
        for _ in self._threads:
            self._jobs.put(_STOP)  # wakes idle workers at once
        queued = self._jobs.qsize() - len(self._threads)
        running = self.running()
        if queued > 0:
            log.info("shutdown: %d queued predictions stay queued for the next start", queued)
        if running:
            log.info(
                "shutdown: waiting up to %.0f s for %d running predictions to finish: %s",
                self._grace,
                len(running),
                ", ".join(running),
            )
        self._join(time.monotonic() + self._grace)
        left = self.running()
        if left:
            log.warning(
                "shutdown: grace period over; handing back %s (they run again after the restart)",
                ", ".join(left),
            )
            for prediction_id in left:
                self._flags.hand_back(prediction_id)
            self._join(time.monotonic() + _HAND_BACK_SECONDS)
            stuck = self.running()
            if stuck:
                log.error("shutdown: %s did not stop; they fail at the next start", stuck)
        self._threads.clear()
        log.info("shutdown: workers stopped")

    def _join(self, deadline: float) -> None:
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0))

    def running(self) -> list[str]:
        with self._lock:
            return sorted(self._running.values())

    def submit(self, prediction_id: str, model: str = "") -> None:
        self._jobs.put(prediction_id)

    def cancel(self, prediction_id: str) -> None:
        self._flags.set(prediction_id)

    def _work(self) -> None:
        name = threading.current_thread().name
        while True:
            job = self._jobs.get()
            if job is _STOP or self._stopping.is_set():
                return
            assert isinstance(job, str)
            with self._lock:
                self._running[name] = job
            try:
                self._execute(job)
            except Exception:
                # The executor turns model errors into failed predictions; reaching here
                # is an infrastructure fault. Keep the worker alive for the next job.
                log.exception("worker crashed while running prediction %s", job)
            finally:
                with self._lock:
                    del self._running[name]

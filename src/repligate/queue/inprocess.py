"""The default queue: long-lived worker threads in this process, a few per device.

Each device gets its own thread(s) that live as long as the server: torch gives every
calling thread its own OpenMP team, so calling a pipeline from a new thread per request
makes the teams fight for the cores (research/serving-overhead.md, lesson 1).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from repligate.queue.base import CancelFlags

log = logging.getLogger(__name__)
_STOP = object()


class InProcessQueue:
    def __init__(
        self,
        execute: Callable[[str], None],
        flags: CancelFlags,
        *,
        devices: int = 1,
        concurrency_per_device: int = 1,
    ) -> None:
        self._execute = execute
        self._flags = flags
        self._jobs: queue.Queue[object] = queue.Queue()
        self._thread_count = devices * concurrency_per_device
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        if self._threads:
            return
        for index in range(self._thread_count):
            thread = threading.Thread(
                target=self._work, name=f"repligate-worker-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the running predictions; queued ones stay `starting` in the store
        and are queued again when the server starts next."""
        for _ in self._threads:
            self._jobs.put(_STOP)
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def submit(self, prediction_id: str) -> None:
        self._jobs.put(prediction_id)

    def cancel(self, prediction_id: str) -> None:
        self._flags.set(prediction_id)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            assert isinstance(job, str)
            try:
                self._execute(job)
            except Exception:
                # The executor turns model errors into failed predictions; reaching here
                # is an infrastructure fault. Keep the worker alive for the next job.
                log.exception("worker crashed while running prediction %s", job)

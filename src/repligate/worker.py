"""``repligate worker``: a Celery worker process that runs the predictions of the models it
is given (``REPLIGATE_QUEUE=celery``), on this host's devices.

It builds the same core as an API process (``runtime.py``: database, storage, runners,
event bus, transition point, executor under leases) and consumes one queue per model.
Its tasks run in long-lived threads, as the in-process queue's do (torch gives each
calling thread its own OpenMP team).

- Cancels: a cancel made in any API process arrives on the event bus and stops the run
  at its next step.
- Usage records are written here, where the predictions end.
- SIGTERM (warm shutdown): no new task is taken; running predictions get
  ``REPLIGATE_SHUTDOWN_GRACE_SECONDS`` to finish, then are handed back (``starting``
  again, on the queue again) and stop at their next step. Their messages are
  acknowledged only once the task returns.
- SIGKILL, a lost host: the leases stop being renewed, and the API processes' reaper
  queues the predictions again (leases.py).
- Metrics: the predictions that end here are counted here (an API process counts only
  its own events); ``--metrics-port`` serves them for Prometheus to scrape.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from celery import shared_task

from repligate import backends
from repligate.bus import local_only
from repligate.queue.celery_app import TASK_NAME, make_celery, queue_names
from repligate.queue.celery_queue import CeleryQueue
from repligate.runtime import Core, build_core
from repligate.settings import Settings
from repligate.usage import UsageRecorder

log = logging.getLogger(__name__)


# Queue name -> what runs its predictions in this process (an executor's ``execute``).
# One Worker per process when deployed; tests run several (each on its own database), and
# Celery looks a task up by name in whichever app it deems current, so the task finds its
# executor by the queue its message came from.
EXECUTORS: dict[str, Callable[[str], None]] = {}


@shared_task(name=TASK_NAME, bind=True, ignore_result=True)
def run_prediction(task: Any, prediction_id: str) -> None:
    queue = (task.request.delivery_info or {}).get("routing_key")
    execute = EXECUTORS.get(queue or "")
    if execute is None:
        raise RuntimeError(f"no worker in this process consumes {queue!r}")
    execute(prediction_id)


def chosen_models(core: Core, names: Sequence[str]) -> list[str]:
    """The ``owner/name`` of each model asked for (all known ones when none is), or
    ValueError naming the unknown ones and the known ones."""
    known = [spec.ref for spec in core.registry.all()]
    if not names:
        return known
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(
            f"unknown model(s): {', '.join(unknown)}; this server knows: {', '.join(known)}"
        )
    return list(dict.fromkeys(names))


class Worker:
    def __init__(
        self,
        settings: Settings,
        models: Sequence[str],
        concurrency: int,
        metrics_port: int | None = None,
    ) -> None:
        if settings.queue != "celery":
            raise ValueError("repligate worker needs REPLIGATE_QUEUE=celery (and a broker)")
        self.settings = settings
        self.core = build_core(settings)
        self.models = chosen_models(self.core, models)
        self.concurrency = concurrency
        self.metrics_port = metrics_port
        self.celery = make_celery(settings)
        self._usage = UsageRecorder(self.core.sessions, self.core.storage, self.core.registry)
        self.core.bus.subscribe(local_only(self._usage.on_event))
        self.core.bus.subscribe(backends.remote_cancels(self.core.flags.set))
        # A handed-back prediction is `starting` again; its message is acknowledged when
        # the task returns, so a new one carries it.
        requeue = CeleryQueue(self.celery, settings.celery_queue_prefix, self.core.flags)
        self.core.executor.on_hand_back = lambda p: requeue.submit(p.id, p.model)
        self._register_task()
        self._grace_timer: threading.Timer | None = None

    def _register_task(self) -> None:
        for queue in self.queues():
            EXECUTORS[queue] = self.core.executor.execute
        self.celery.finalize()  # the shared task joins this app now

    def queues(self) -> list[str]:
        return queue_names(self.settings.celery_queue_prefix, self.models)

    def hand_back_running(self) -> list[str]:
        """Tell every running prediction to stop at its next step and go back to the
        queue (the end of the shutdown grace period)."""
        running = sorted(self.core.leases.held())
        for prediction_id in running:
            self.core.flags.hand_back(prediction_id)
        if running:
            log.warning("shutdown: grace period over; handing back %s", ", ".join(running))
        return running

    def _on_shutting_down(self, **_: Any) -> None:
        running = sorted(self.core.leases.held())
        if not running:
            return
        log.info(
            "shutdown: waiting up to %.0f s for %s to finish",
            self.settings.shutdown_grace_seconds,
            ", ".join(running),
        )
        self._grace_timer = threading.Timer(
            self.settings.shutdown_grace_seconds, self.hand_back_running
        )
        self._grace_timer.daemon = True
        self._grace_timer.start()

    def run(self) -> None:
        """Consume until a signal stops the worker (blocking)."""
        from celery import signals

        signals.worker_shutting_down.connect(self._on_shutting_down, weak=False)
        if self.metrics_port is not None:
            from prometheus_client import start_http_server

            start_http_server(self.metrics_port, registry=self.core.metrics.registry)
            log.info("metrics on :%d/metrics", self.metrics_port)
        worker = self.celery.Worker(
            queues=self.queues(),
            pool="threads",
            concurrency=self.concurrency,
            loglevel="INFO",
            without_gossip=True,
            without_mingle=True,
            without_heartbeat=True,
            optimization="fair",
        )
        try:
            worker.start()
        finally:
            if self._grace_timer is not None:
                self._grace_timer.cancel()
            self.close()

    def close(self) -> None:
        self.core.leases.stop()
        self._usage.close()
        self.core.bus.close()
        self.celery.close()
        self.core.engine.dispose()

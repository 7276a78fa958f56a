"""The Celery application both sides share: the API processes send tasks to it
(``celery_queue.CeleryQueue``), ``repligate worker`` processes run them (``worker.py``).

A task carries only a prediction id; the row is the truth. Each model has its own queue,
``<prefix>.<owner>.<name>``, so a worker host takes only the models it is given.

Delivery: tasks are acknowledged after they ran (late), with one task reserved per
worker thread, so a worker that dies leaves its tasks with the broker. What a task does
twice is harmless: the claim (``Transitions.claim``) lets only a ``starting`` prediction
run. A run cut off by a dead worker is queued again by the API processes' reaper once its
lease runs out (leases.py), whatever the broker does with the lost message.
"""

from __future__ import annotations

from typing import Any

from repligate.settings import Settings

TASK_NAME = "repligate.run_prediction"
# Redis only: an unacknowledged message is given to another worker after this long. The
# reaper already reruns lost work, so this only rescues a message a worker took and
# died with before claiming it; a duplicate of a run still going is harmless (its claim
# fails) and costs one message.
REDIS_VISIBILITY_SECONDS = 600


def queue_name(prefix: str, model: str) -> str:
    """The queue of one model (``owner/name``)."""
    owner, _, name = model.partition("/")
    if not owner or not name:
        raise ValueError(f"a model is owner/name, not {model!r}")
    return f"{prefix}.{owner}.{name}"


def queue_names(prefix: str, models: list[str]) -> list[str]:
    """The queues of these models (``owner/name`` each), in their order."""
    return [queue_name(prefix, model) for model in models]


def make_celery(settings: Settings) -> Any:
    from celery import Celery  # the `celery` extra: imported only where it is chosen

    if not settings.broker_url:
        raise ValueError("REPLIGATE_QUEUE=celery needs REPLIGATE_BROKER_URL")
    app = Celery("repligate", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        # A worker process killed mid-task: the message goes back to the broker.
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        broker_transport_options={"visibility_timeout": REDIS_VISIBILITY_SECONDS},
        # The row carries status; no broadcast control channel or task events needed.
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        # Warm shutdown (SIGTERM) waits for running tasks; the worker hands them back
        # itself after its grace period (worker.py).
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app

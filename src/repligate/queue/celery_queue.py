"""The API side of ``REPLIGATE_QUEUE=celery``: a created prediction becomes a task on its
model's queue; ``repligate worker`` processes run it (``worker.py``).

A cancel needs nothing from the broker: the cancel's ``completed`` event crosses the
event bus to the worker running it (``backends.remote_cancels``), and the worker's next
log write finds the prediction no longer ``processing`` anyway.
"""

from __future__ import annotations

import logging
from typing import Any

from repligate.errors import QueueUnavailable
from repligate.queue.base import CancelFlags
from repligate.queue.celery_app import TASK_NAME, make_celery, queue_name
from repligate.settings import Settings

log = logging.getLogger(__name__)

# How a send retries while the broker is out of reach, before the create answers 503.
_RETRY_POLICY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5}


class CeleryQueue:
    durable = True

    def __init__(self, app: Any, prefix: str, flags: CancelFlags) -> None:
        self.app = app
        self._prefix = prefix
        self._flags = flags

    @classmethod
    def from_settings(cls, settings: Settings, flags: CancelFlags) -> CeleryQueue:
        return cls(make_celery(settings), settings.celery_queue_prefix, flags)

    def submit(self, prediction_id: str, model: str = "") -> None:
        if not model:
            raise ValueError("the Celery queue routes by model: give it")
        try:
            self.app.send_task(
                TASK_NAME,
                args=[prediction_id],
                queue=queue_name(self._prefix, model),
                retry=True,
                retry_policy=_RETRY_POLICY,
            )
        except Exception as error:  # kombu's OperationalError and friends
            log.error("the broker refused prediction %s: %s", prediction_id, error)
            raise QueueUnavailable(
                "The prediction could not be queued: the broker is unavailable. Try again."
            ) from error

    def cancel(self, prediction_id: str) -> None:
        self._flags.set(prediction_id)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        # Nothing runs here; queued tasks stay with the broker.
        self.app.close()

    def ready_check(self) -> None:
        """Raises unless the broker answers (``GET /ready``)."""
        with self.app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)

"""The event bus: what happened to a prediction, told to everyone who reacts to it.

The transition point (``transitions.py``) publishes one ``PredictionEvent`` after each
write that changed a prediction: ``started``, ``logs``, ``output``, ``completed``. Each
carries the prediction as it stood right after that write. Subscribers (``Prefer: wait``
waiters today; webhooks, streams, usage and metrics next) register once when the app is
wired and never write a status themselves.

``InProcessBus`` calls subscribers in the publishing thread, so they must be quick and
must not block (hand work to a queue or an event loop). A cross-process bus (Redis
pub/sub, PostgreSQL LISTEN/NOTIFY) implements the same two methods: an event is its kind
plus a plain record, so it serialises as it is, and subscribers do not change.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from repligate.records import Prediction

log = logging.getLogger(__name__)


class EventKind(StrEnum):
    # Replicate's webhook event names, so a webhook filter reads them as they are.
    STARTED = "start"
    OUTPUT = "output"
    LOGS = "logs"
    COMPLETED = "completed"


@dataclass(frozen=True)
class PredictionEvent:
    kind: EventKind
    prediction: Prediction
    # True when the write happened in this process; False when a cross-process bus
    # brought it from another one (bus_redis.py). Counting subscribers (metrics, usage,
    # the webhook outbox) take only local ones, so each event is counted once.
    local: bool = True


Subscriber = Callable[[PredictionEvent], None]


class EventBus(Protocol):
    def subscribe(self, subscriber: Subscriber) -> None: ...

    def publish(self, event: PredictionEvent) -> None: ...

    def close(self) -> None: ...


def local_only(subscriber: Subscriber) -> Subscriber:
    """A subscriber that hears only the events written in its own process (those that
    count something: another process counts its own)."""

    def on_local(event: PredictionEvent) -> None:
        if event.local:
            subscriber(event)

    return on_local


class InProcessBus:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()

    def subscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers = [*self._subscribers, subscriber]

    def close(self) -> None:
        pass

    def publish(self, event: PredictionEvent) -> None:
        # The list is replaced, never mutated, so reading it needs no lock.
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception:
                # One broken subscriber must not stop the others, nor the prediction.
                log.exception("subscriber %r failed on %s", subscriber, event.kind)

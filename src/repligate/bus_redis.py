"""The event bus across processes, on Redis pub/sub (``REPLIGATE_EVENT_BUS_URL``).

Every API process and worker publishes its prediction events on one channel and runs
one listener thread that hands the others' events to its local subscribers, marked
``local=False``. A process's own events are delivered to its subscribers in the
publishing thread, as ``InProcessBus`` does, and once only: each message carries the id
of the process that sent it, and the listener skips its own.

Pub/sub is fire-and-forget: a process that is down misses what was published meanwhile.
Nothing depends on that for correctness; the database row stays the truth (waiters
re-read it when their wait ends, streams start from the row).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import uuid
from dataclasses import asdict, fields
from datetime import datetime
from typing import Any

import redis

from repligate.bus import EventKind, InProcessBus, PredictionEvent, Subscriber
from repligate.lifecycle import Status
from repligate.records import Prediction, RunProgress

log = logging.getLogger(__name__)

DEFAULT_CHANNEL = "repligate:events"
_DATETIMES = ("created_at", "started_at", "completed_at", "deadline")


def encode(event: PredictionEvent, origin: str) -> str:
    record = asdict(event.prediction)
    for name in _DATETIMES:
        value = record[name]
        record[name] = value.isoformat() if value is not None else None
    record["status"] = event.prediction.status.value
    return json.dumps({"origin": origin, "kind": event.kind.value, "prediction": record})


def decode(message: str | bytes) -> tuple[str, PredictionEvent]:
    """The sender's process id and the event it published (``local=False``)."""
    body = json.loads(message)
    record: dict[str, Any] = body["prediction"]
    known = {f.name for f in fields(Prediction)}
    # A newer sender may carry fields this process does not know yet: they are dropped.
    record = {k: v for k, v in record.items() if k in known}
    for name in _DATETIMES:
        if record.get(name) is not None:
            record[name] = datetime.fromisoformat(record[name])
    record["status"] = Status(record["status"])
    if record.get("progress") is not None:
        record["progress"] = RunProgress(**record["progress"])
    prediction = Prediction(**record)
    return body["origin"], PredictionEvent(EventKind(body["kind"]), prediction, local=False)


class RedisBus:
    def __init__(self, url: str, *, channel: str = DEFAULT_CHANNEL) -> None:
        self.origin = uuid.uuid4().hex
        self._channel = channel
        self._local = InProcessBus()
        self._client = redis.Redis.from_url(url)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        # This process's own channel: close() wakes the listener through it at once,
        # instead of waiting out its read timeout (half a second on every shutdown).
        self._wake = f"{channel}:wake:{self.origin}"
        # Subscribed before the constructor returns (this raises when Redis is not
        # there): no event published after the process is wired is missed.
        self._pubsub.subscribe(channel, self._wake)
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._listen, name="repligate-event-bus", daemon=True
        )
        self._thread.start()

    def subscribe(self, subscriber: Subscriber) -> None:
        self._local.subscribe(subscriber)

    def publish(self, event: PredictionEvent) -> None:
        self._local.publish(event)
        try:
            self._client.publish(self._channel, encode(event, self.origin))
        except redis.RedisError:
            # The write is done and local subscribers have it; other processes' waiters
            # end at their timeout and read the row.
            log.exception("could not publish %s of %s", event.kind, event.prediction.id)

    def ready_check(self) -> None:
        """``GET /ready``'s check (readiness.py): Redis answers a PING. Publishing is
        fire-and-forget, so without this a Redis that went away would only show as
        waiters and streams on other processes waking late."""
        self._client.ping()

    def close(self) -> None:
        self._stopping.set()
        # Redis gone: the listener ends at its read timeout instead.
        with contextlib.suppress(redis.RedisError):
            self._client.publish(self._wake, b"")
        self._thread.join(timeout=5)
        self._pubsub.close()
        self._client.close()

    def _listen(self) -> None:
        while not self._stopping.is_set():
            try:
                message = self._pubsub.get_message(timeout=0.5)
            except redis.RedisError:
                # Redis restarted: redis-py reconnects and resubscribes on the next read.
                log.warning("event bus connection lost; reconnecting")
                self._stopping.wait(1.0)
                continue
            if message is None or message["type"] != "message":
                continue
            if message["channel"] in (self._wake, self._wake.encode()):
                continue  # close() asked; the loop's condition ends it
            try:
                origin, event = decode(message["data"])
            except (ValueError, KeyError, TypeError):
                log.exception("undecodable event on %s", self._channel)
                continue
            if origin != self.origin:
                self._local.publish(event)

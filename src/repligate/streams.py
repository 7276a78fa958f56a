"""Server-Sent Event streams of predictions (``urls.stream``), as Replicate sends them.

Events: ``output`` (one per output item, a URL for a file, JSON for a value that is not
text), ``logs`` (the new log text), ``error`` (``{"detail": ...}``, before the end of a
failed prediction) and ``done`` (``{}``, ``{"reason": "canceled"}`` or
``{"reason": "error"}``), which ends the stream. A stream opened with ``?progress=1`` also
sends ``progress`` (the prediction's ``progress`` object as JSON, when it changed): only
on request, because the official client fails on an event type it does not know. Every
event carries an ``id:`` (the official client drops events until it has seen one).

``StreamHub`` is a subscriber of the event bus. Streams are coroutines, not threads: each
registers an ``asyncio.Queue`` for its prediction, and the bus (which publishes from
worker threads) hands each snapshot to the stream's loop with ``call_soon_threadsafe``.
A stream turns the snapshots it gets into events with ``StreamState``, which remembers
what it has sent: a stream that starts late sends everything so far, then what comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from repligate.bus import PredictionEvent
from repligate.lifecycle import Status
from repligate.records import Prediction, RunProgress

# A stream's queue gets a snapshot, or None: the server is stopping.
Snapshots = asyncio.Queue[Prediction | None]


@dataclass(frozen=True)
class StreamEvent:
    event: str
    data: str

    def encode(self, event_id: int) -> bytes:
        # One data: line per line of text; the client joins them with newlines again.
        lines = "".join(f"data: {line}\n" for line in self.data.split("\n"))
        return f"event: {self.event}\nid: {event_id}\n{lines}\n".encode()


class StreamState:
    """What one stream has sent of a prediction, to send only what is new."""

    def __init__(self, *, progress: bool = False) -> None:
        self.logs_sent = 0
        self.outputs_sent = 0
        self.done = False
        # Send ``progress`` events (asked for with ?progress=1); the last one sent.
        self.progress = progress
        self.progress_sent: RunProgress | None = None

    def advance(self, prediction: Prediction, resolve: Callable[[Any], Any]) -> list[StreamEvent]:
        """The events that bring a client from what it saw to ``prediction``.
        ``resolve`` turns stored output (``storage:`` keys) into URLs."""
        if self.done:
            return []
        events = []
        if len(prediction.logs) > self.logs_sent:
            events.append(StreamEvent("logs", prediction.logs[self.logs_sent :]))
            self.logs_sent = len(prediction.logs)
        if self.progress and prediction.progress not in (None, self.progress_sent):
            assert prediction.progress is not None
            events.append(StreamEvent("progress", json.dumps(prediction.progress.as_json())))
            self.progress_sent = prediction.progress
        terminal = prediction.status.is_terminal
        output = resolve(prediction.output) if prediction.output is not None else None
        if isinstance(output, list):
            items = output
        else:
            # A single value is complete only when the prediction is.
            items = [output] if terminal and output is not None else []
        for item in items[self.outputs_sent :]:
            events.append(
                StreamEvent("output", item if isinstance(item, str) else json.dumps(item))
            )
        self.outputs_sent = max(self.outputs_sent, len(items))
        if terminal:
            self.done = True
            if prediction.status is Status.FAILED:
                events.append(StreamEvent("error", json.dumps({"detail": prediction.error or ""})))
                events.append(StreamEvent("done", json.dumps({"reason": "error"})))
            elif prediction.status is Status.CANCELED:
                events.append(StreamEvent("done", json.dumps({"reason": "canceled"})))
            else:
                events.append(StreamEvent("done", "{}"))
        return events


class StreamHub:
    def __init__(self) -> None:
        self._streams: dict[str, list[tuple[asyncio.AbstractEventLoop, Snapshots]]] = {}
        self._lock = threading.Lock()

    def subscribe(self, prediction_id: str) -> Snapshots:
        queue: Snapshots = asyncio.Queue()
        loop = asyncio.get_running_loop()
        with self._lock:
            self._streams.setdefault(prediction_id, []).append((loop, queue))
        return queue

    def unsubscribe(self, prediction_id: str, queue: Snapshots) -> None:
        with self._lock:
            kept = [s for s in self._streams.get(prediction_id, []) if s[1] is not queue]
            if kept:
                self._streams[prediction_id] = kept
            else:
                self._streams.pop(prediction_id, None)

    def count(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._streams.values())

    def on_event(self, event: PredictionEvent) -> None:
        with self._lock:
            streams = list(self._streams.get(event.prediction.id, ()))
        _hand(streams, event.prediction)

    def close_all(self) -> None:
        """The server is stopping: every stream ends now (clients reconnect)."""
        with self._lock:
            streams = [s for ss in self._streams.values() for s in ss]
        _hand(streams, None)


def _hand(
    streams: list[tuple[asyncio.AbstractEventLoop, Snapshots]], item: Prediction | None
) -> None:
    for loop, queue in streams:
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(queue.put_nowait, item)

"""Wake up requests waiting for a prediction to finish (``Prefer: wait``).

A subscriber of the event bus: each ``completed`` event wakes that prediction's waiters.
Workers run in threads; waiters are coroutines. ``notify`` is thread-safe and hands the
wake-up to each waiter's event loop, with the prediction as the event carried it, so
the waiter answers without reading it again.
"""

from __future__ import annotations

import asyncio
import threading

from repligate.bus import EventKind, PredictionEvent
from repligate.records import Prediction


class Completion(asyncio.Event):
    """Set when the prediction completed; ``prediction`` is how it ended (None when the
    wake-up came without one: the server is stopping)."""

    prediction: Prediction | None = None


class CompletionNotifier:
    def __init__(self) -> None:
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, Completion]]] = {}
        self._lock = threading.Lock()

    def subscribe(self, prediction_id: str) -> Completion:
        event = Completion()
        loop = asyncio.get_running_loop()
        with self._lock:
            self._waiters.setdefault(prediction_id, []).append((loop, event))
        return event

    def unsubscribe(self, prediction_id: str, event: Completion) -> None:
        with self._lock:
            waiters = self._waiters.get(prediction_id, [])
            self._waiters[prediction_id] = [w for w in waiters if w[1] is not event]
            if not self._waiters[prediction_id]:
                del self._waiters[prediction_id]

    def notify(self, prediction_id: str, prediction: Prediction | None = None) -> None:
        with self._lock:
            waiters = list(self._waiters.get(prediction_id, []))
        _wake(waiters, prediction)

    def notify_all(self) -> None:
        """Wake every waiter (the server is stopping: they answer with what they have)."""
        with self._lock:
            waiters = [w for ws in self._waiters.values() for w in ws]
        _wake(waiters, None)

    def on_event(self, event: PredictionEvent) -> None:
        if event.kind is EventKind.COMPLETED:
            self.notify(event.prediction.id, event.prediction)


def _wake(
    waiters: list[tuple[asyncio.AbstractEventLoop, Completion]], prediction: Prediction | None
) -> None:
    for loop, event in waiters:
        if not loop.is_closed():
            loop.call_soon_threadsafe(_complete, event, prediction)


def _complete(event: Completion, prediction: Prediction | None) -> None:
    if prediction is not None:
        event.prediction = prediction
    event.set()

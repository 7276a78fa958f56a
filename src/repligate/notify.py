"""Wake up requests waiting for a prediction to finish (``Prefer: wait``).

A subscriber of the event bus: each ``completed`` event wakes that prediction's waiters.
Workers run in threads; waiters are coroutines. ``notify`` is thread-safe and hands the
wake-up to each waiter's event loop.
"""

from __future__ import annotations

import asyncio
import threading

from repligate.bus import EventKind, PredictionEvent


class CompletionNotifier:
    def __init__(self) -> None:
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._lock = threading.Lock()

    def subscribe(self, prediction_id: str) -> asyncio.Event:
        event = asyncio.Event()
        loop = asyncio.get_running_loop()
        with self._lock:
            self._waiters.setdefault(prediction_id, []).append((loop, event))
        return event

    def unsubscribe(self, prediction_id: str, event: asyncio.Event) -> None:
        with self._lock:
            waiters = self._waiters.get(prediction_id, [])
            self._waiters[prediction_id] = [w for w in waiters if w[1] is not event]
            if not self._waiters[prediction_id]:
                del self._waiters[prediction_id]

    def notify(self, prediction_id: str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(prediction_id, []))
        for loop, event in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

    def notify_all(self) -> None:
        """Wake every waiter (the server is stopping: they answer with what they have)."""
        with self._lock:
            waiters = [w for ws in self._waiters.values() for w in ws]
        for loop, event in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

    def on_event(self, event: PredictionEvent) -> None:
        if event.kind is EventKind.COMPLETED:
            self.notify(event.prediction.id)

"""The queue interface, and the cancel flags a worker checks between steps."""

from __future__ import annotations

import threading
from typing import Protocol


class Queue(Protocol):
    # True when queued predictions outlive this process (a broker keeps them); False when
    # they live in its memory, so a restart queues the `starting` ones again.
    durable: bool

    def submit(self, prediction_id: str, model: str = "") -> None:
        """Queue a `starting` prediction of ``model`` (owner/name: a broker routes by it)."""
        ...

    def cancel(self, prediction_id: str) -> None:
        """Ask the worker running ``prediction_id`` to stop at its next step."""
        ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class CancelFlags:
    """Thread-safe flags a worker checks between steps: the ids whose cancel was asked
    for in this process, and those to hand back to the queue because the server stops."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._handed_back: set[str] = set()
        self._lock = threading.Lock()

    def set(self, prediction_id: str) -> None:
        with self._lock:
            self._ids.add(prediction_id)

    def hand_back(self, prediction_id: str) -> None:
        """Stop at the next step, and queue the prediction again instead of ending it."""
        with self._lock:
            self._ids.add(prediction_id)
            self._handed_back.add(prediction_id)

    def is_set(self, prediction_id: str) -> bool:
        with self._lock:
            return prediction_id in self._ids

    def is_handed_back(self, prediction_id: str) -> bool:
        with self._lock:
            return prediction_id in self._handed_back

    def clear(self, prediction_id: str) -> None:
        with self._lock:
            self._ids.discard(prediction_id)
            self._handed_back.discard(prediction_id)

"""Loaded pipelines, kept per process and shared by every prediction (LRU by count)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class PipelineCache:
    def __init__(self, max_entries: int = 4) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, key: str, load: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        # One loader per key; other keys load in parallel.
        with key_lock:
            with self._lock:
                if key in self._entries:
                    return self._entries[key]
            value = load()
            with self._lock:
                self._entries[key] = value
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
            return value

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

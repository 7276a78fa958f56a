"""Loaded pipelines, kept per process and shared by every prediction: LRU by memory.

The cache keeps pipelines while the bytes of their modules' parameters and buffers stay
under ``max_bytes``, counting a module once however many pipelines share it (SD 2.1's
txt2img and img2img, SDXL's base and refiner). Past the cap the least recently used go
first; the newest always stays, whatever its size. A count cap would either thrash (five
SD-family pipelines, four places) or overfill a GPU with a few large ones.

What is not torch (an onnxruntime InferenceSession, ...) cannot be measured from outside:
it declares its size (``DeclaresBytes``; ``SizedValue`` wraps a value that cannot), e.g. the
size of the model file it was loaded from. A value that is neither counts as nothing.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")


@runtime_checkable
class DeclaresBytes(Protocol):
    """A cache entry that says how many bytes of memory it holds."""

    @property
    def memory_bytes(self) -> int: ...


@dataclass(frozen=True)
class SizedValue(Generic[T]):
    """A value with the bytes it holds, declared by whoever loaded it: for what cannot
    carry an attribute of its own. ``cache.get(key, lambda: SizedValue(session, n)).value``."""

    value: T
    memory_bytes: int


def _parts(value: Any) -> Iterator[tuple[int, Callable[[], int]]]:
    """What ``value`` holds, each part once by identity, with how to measure it: the value
    itself if it declares its bytes, else its torch modules (or itself, if a module)."""
    if isinstance(value, DeclaresBytes):
        yield id(value), lambda: value.memory_bytes
        return
    # Not imported: then nothing here is a torch module (and torch may not be installed).
    torch = sys.modules.get("torch")
    if torch is None:
        return
    if isinstance(value, torch.nn.Module):
        yield id(value), functools.partial(module_bytes, value)
        return
    for component in getattr(value, "components", {}).values():
        if isinstance(component, torch.nn.Module):
            yield id(component), functools.partial(module_bytes, component)


def module_bytes(module: Any) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


class PipelineCache:
    def __init__(
        self, max_bytes: int | None = None, release: Callable[[], None] | None = None
    ) -> None:
        self.max_bytes = max_bytes
        # Called after an eviction, e.g. to hand freed GPU memory back to the driver.
        self._release = release
        self._entries: OrderedDict[str, Any] = OrderedDict()
        self._sizes: dict[int, int] = {}  # id(part) -> bytes, for the parts held now
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        # Told the bytes held after each load (the metrics count loads and bytes).
        self.on_load: Callable[[int], None] | None = None

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
                evicted = self._evict_past_cap()
                held = self._held_bytes() if self.on_load is not None else 0
            if evicted and self._release is not None:
                self._release()
            if self.on_load is not None:
                self.on_load(held)
            return value

    def held_bytes(self) -> int:
        """Bytes of every module held, shared modules counted once."""
        with self._lock:
            return self._held_bytes()

    def _held_bytes(self) -> int:
        held: dict[int, int] = {}
        for value in self._entries.values():
            for key, measure in _parts(value):
                if key not in held:
                    held[key] = self._sizes.get(key) or measure()
        self._sizes = held
        return sum(held.values())

    def _evict_past_cap(self) -> bool:
        evicted = False
        if self.max_bytes is None:
            return evicted
        while len(self._entries) > 1 and self._held_bytes() > self.max_bytes:
            self._entries.popitem(last=False)
            evicted = True
        return evicted

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def keys(self) -> list[str]:
        """The keys held now, least recently used first."""
        with self._lock:
            return list(self._entries)

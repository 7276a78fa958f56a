"""``InMemoryStorage``: the Storage interface in a dict, for tests that need no disk.

    storage = InMemoryStorage()
    ref = storage.put("predictions/p1/out-0.png", b"...", "image/png")
    storage.open("predictions/p1/out-0.png").read()

Thread-safe (workers write while requests read). ``content_type(key)`` and ``list_keys()`` let a
test check what was written.
"""

from __future__ import annotations

import io
import threading
from typing import BinaryIO

from repligate.storage.base import Readable, reference


class InMemoryStorage:
    def __init__(self) -> None:
        self._objects: dict[str, tuple[bytes, str]] = {}
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes, content_type: str) -> str:
        with self._lock:
            self._objects[key] = (bytes(data), content_type)
        return reference(key)

    def put_file(self, key: str, source: Readable, content_type: str) -> str:
        return self.put(key, source.read(), content_type)

    def open(self, key: str) -> BinaryIO:
        with self._lock:
            found = self._objects.get(key)
        if found is None:
            raise FileNotFoundError(key)
        return io.BytesIO(found[0])

    def delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(key, None)

    def url(self, key: str, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/files/{key}"

    def content_type(self, key: str) -> str | None:
        with self._lock:
            found = self._objects.get(key)
        return found[1] if found else None

    def list_keys(self) -> list[str]:
        with self._lock:
            return sorted(self._objects)

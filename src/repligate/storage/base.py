"""The storage interface. Rows keep ``storage:<key>`` strings; URLs are made on the way out,
so a prediction's URLs follow the server's base URL (configured or the request's).

Every backend (local disk, the in-memory fake in ``repligate.testing``, S3 later) offers
the same five calls, so no caller needs to know which one it has: ``put`` and
``put_file`` write, ``open`` reads, ``delete`` removes, ``url`` says where a client
downloads an object. ``open`` raises ``FileNotFoundError`` for a key it does not hold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, BinaryIO, Protocol

SCHEME = "storage:"


class Readable(Protocol):
    """What ``put_file`` reads from: an open binary file, or anything with its ``read``."""

    def read(self, size: int = -1, /) -> bytes: ...


class Storage(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> str:
        """Write ``data`` under ``key``; returns the reference to keep in the row."""
        ...

    def put_file(self, key: str, source: Readable, content_type: str) -> str:
        """Write what ``source`` holds from its current position, streamed (uploads may be
        large); returns the reference to keep in the row."""
        ...

    def open(self, key: str) -> BinaryIO:
        """The object under ``key``, open for reading; ``FileNotFoundError`` if none."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object under ``key``; a missing one is not an error."""
        ...

    def url(self, key: str, base_url: str) -> str:
        """The absolute URL a client downloads ``key`` from."""
        ...


def reference(key: str) -> str:
    return SCHEME + key


def map_leaves(output: Any, change: Callable[[Any], Any]) -> Any:
    """The same JSON shape (lists, dicts) with ``change`` applied to every other value."""
    if isinstance(output, list):
        return [map_leaves(item, change) for item in output]
    if isinstance(output, dict):
        return {k: map_leaves(v, change) for k, v in output.items()}
    return change(output)


def keys_in(output: Any) -> set[str]:
    """The storage keys an output (any JSON shape) refers to."""
    found: set[str] = set()

    def collect(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(SCHEME):
            found.add(value[len(SCHEME) :])
        return value

    map_leaves(output, collect)
    return found


def resolve_output(output: Any, storage: Storage, base_url: str) -> Any:
    """Replace every ``storage:<key>`` string in an output (any JSON shape) by its URL."""

    def url(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(SCHEME):
            return storage.url(value[len(SCHEME) :], base_url)
        return value

    return map_leaves(output, url)

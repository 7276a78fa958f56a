"""The storage interface. Rows keep ``storage:<key>`` strings; URLs are made on the way out,
so a prediction's URLs follow the server's base URL (configured or the request's)."""

from __future__ import annotations

from typing import Any, Protocol

SCHEME = "storage:"


class Storage(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> str:
        """Write ``data`` under ``key``; returns the reference to keep in the row."""
        ...

    def url(self, key: str, base_url: str) -> str:
        """The absolute URL a client downloads ``key`` from."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``; nothing happens when it does not exist."""
        ...


def reference(key: str) -> str:
    return SCHEME + key


def resolve_output(output: Any, storage: Storage, base_url: str) -> Any:
    """Replace every ``storage:<key>`` string in an output (any JSON shape) by its URL."""
    if isinstance(output, str):
        if output.startswith(SCHEME):
            return storage.url(output[len(SCHEME) :], base_url)
        return output
    if isinstance(output, list):
        return [resolve_output(item, storage, base_url) for item in output]
    if isinstance(output, dict):
        return {k: resolve_output(v, storage, base_url) for k, v in output.items()}
    return output

"""Upstream output files copied into this server's storage, so ``output`` and
``data[].url`` point here (Replicate deletes its files an hour after a prediction).

Every http(s) URL or data URI in an output is fetched through ``fetch.Fetcher`` (size and
time limits, address rules) and stored as ``storage:<key>``. The upstream's own host is
trusted as the operator configured it: a loopback or private upstream is allowed for
its own files without allowing private addresses to every fetch. Blocking (a thread).
"""

from __future__ import annotations

import ipaddress
import posixpath
import socket
import threading
from typing import Any
from urllib.parse import urlsplit

from repligate.errors import PredictionFailure
from repligate.fetch import Fetcher, FetchRefused
from repligate.settings import Settings
from repligate.storage.base import Storage, map_leaves

EXPIRED_HINT = "Replicate deletes output files an hour after a prediction ends"


class OutputCopyFailed(PredictionFailure):
    pass


def upstream_networks(upstream_url: str) -> list[str]:
    """The addresses of the upstream's host, as single-address networks."""
    host = urlsplit(upstream_url).hostname or ""
    try:
        return [str(ipaddress.ip_network(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    return sorted({str(ipaddress.ip_network(info[4][0])) for info in infos})


def _is_file(value: Any) -> bool:
    return isinstance(value, str) and value[:8].lower().startswith(("https://", "http://", "data:"))


class OutputCopier:
    def __init__(self, settings: Settings, storage: Storage) -> None:
        self._settings = settings
        self._storage = storage
        self._fetcher: Fetcher | None = None
        self._lock = threading.Lock()

    def fetcher(self) -> Fetcher:
        with self._lock:
            if self._fetcher is None:
                s = self._settings
                self._fetcher = Fetcher(
                    max_bytes=s.fetch_max_bytes,
                    timeout=s.fetch_timeout_seconds,
                    max_redirects=s.fetch_max_redirects,
                    allow_private=s.fetch_allow_private,
                    allowed_networks=[
                        *s.fetch_allowed_networks,
                        *upstream_networks(s.upstream_url),
                    ],
                    max_pixels=s.max_image_pixels,
                )
            return self._fetcher

    def copy(self, prediction_id: str, output: Any, index: int | None = None) -> Any:
        """``output`` with every file in it copied here (``storage:<key>`` in its place).
        ``index``: the item's position in an iterator output (keeps names apart)."""
        counter = [0]

        def put(value: Any) -> Any:
            if not _is_file(value):
                return value
            counter[0] += 1
            name = _name(value, index, counter[0])
            try:
                fetched = self.fetcher().fetch(value, field="output")
            except FetchRefused as exc:
                raise OutputCopyFailed(
                    f"An output file could not be copied from upstream ({exc}); "
                    f"{EXPIRED_HINT}, so a prediction relayed more than an hour ago may "
                    "have lost its files."
                ) from None
            key = f"predictions/{prediction_id}/{name}"
            return self._storage.put(key, fetched.data, fetched.content_type)

        return map_leaves(output, put)


def _name(url: str, index: int | None, counter: int) -> str:
    base = "output"
    if not url.lower().startswith("data:"):
        path_name = posixpath.basename(urlsplit(url).path)
        if path_name and path_name not in (".", ".."):
            base = "".join(c if c.isalnum() or c in "._-" else "_" for c in path_name)[:100]
    prefix = f"{index}-" if index is not None else ""
    return f"{prefix}{counter}-{base}" if counter > 1 or index is not None else base

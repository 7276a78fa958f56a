"""Weights downloaded by URL for one prediction (SDXL's ``replicate_weights`` tarballs,
Flux's ``hf_lora`` files), kept in one disk cache shared by every model.

Each entry is a directory ``<root>/<sha256(key)[:16]>/`` filled once by the caller's
``fill`` function (a download through the server's Fetcher, perhaps an extraction). The
cache is capped in bytes: past the cap the least recently used entries go first (recency is
the directory's mtime, so it survives a restart), never one a prediction is reading now.
Concurrent predictions that ask for the same key wait for one download (single flight);
different keys download in parallel.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from repligate.errors import PredictionFailure


class DownloadedWeightsError(PredictionFailure, ValueError):
    """Downloaded weights could not be used; the message says why (fails the prediction)."""


class WeightsCache:
    def __init__(self, root: Path, *, max_bytes: int, max_download_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        # The largest download, and the largest a tarball may unpack to.
        self.max_download_bytes = max_download_bytes
        self._lock = threading.Lock()  # guards the fields below and every eviction
        self._filling: dict[Path, threading.Lock] = {}
        self._in_use: dict[Path, int] = {}
        # How many entries were filled (downloaded) by this process: for benchmarks/tests.
        self.fills = 0

    @contextmanager
    def entry(self, key: str, fill: Callable[[Path], None]) -> Iterator[Path]:
        """The directory for ``key``, filled by ``fill(empty_directory)`` the first time;
        not evicted while the block runs."""
        directory = self.root / hashlib.sha256(key.encode()).hexdigest()[:16]
        if not self._use_if_present(directory):
            with self._lock:
                filling = self._filling.setdefault(directory, threading.Lock())
            # One download per key: the others wait here and then find it present.
            with filling:
                if not self._use_if_present(directory):
                    self._fill(directory, fill)
            with self._lock:
                self._filling.pop(directory, None)
        try:
            yield directory
        finally:
            with self._lock:
                self._in_use[directory] -= 1
                if not self._in_use[directory]:
                    del self._in_use[directory]
                self._evict()

    def _use_if_present(self, directory: Path) -> bool:
        with self._lock:
            if not directory.is_dir():
                return False
            os.utime(directory)  # most recently used
            self._in_use[directory] = self._in_use.get(directory, 0) + 1
            return True

    def _fill(self, directory: Path, fill: Callable[[Path], None]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        scratch = self.root / f"tmp-{uuid.uuid4().hex}"
        try:
            scratch.mkdir()
            fill(scratch)
            with self._lock:
                scratch.rename(directory)
                self._in_use[directory] = self._in_use.get(directory, 0) + 1
                self.fills += 1
                self._evict()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _evict(self) -> None:
        """Called with the lock held: oldest first until under the cap, skipping entries
        in use (they go on a later call, once released) and the newest."""
        if not self.root.is_dir():
            return
        entries = []
        for entry in self.root.iterdir():
            if entry.is_dir() and not entry.name.startswith("tmp-"):
                entries.append((entry.stat().st_mtime, _size(entry), entry))
        total = sum(size for _, size, _ in entries)
        # The most recently used entry always stays, whatever its size.
        for _, size, entry in sorted(entries, key=lambda e: e[0])[:-1]:
            if total <= self.max_bytes:
                break
            if entry not in self._in_use:
                shutil.rmtree(entry, ignore_errors=True)
                total -= size


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def extract_tar(archive: Path, target: Path, *, max_bytes: int, field: str) -> None:
    """Unpack ``archive`` into ``target`` with tarfile's ``data`` filter (no absolute
    paths, no ``..``, no links out, no devices), refusing one that unpacks past
    ``max_bytes``."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            # A compressed tarball may unpack far larger than it downloaded.
            total = sum(m.size for m in members if m.isfile())
            if total > max_bytes:
                raise DownloadedWeightsError(
                    f"{field}: the tarball unpacks to {total} bytes, more than {max_bytes}"
                )
            tar.extractall(target, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DownloadedWeightsError(f"{field}: not a tarball we can extract: {exc}") from exc

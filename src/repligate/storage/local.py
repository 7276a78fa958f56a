"""Objects as files on the local disk, under one root. Outputs are served by the API at
``/files/<key>``; uploads are read through ``/v1/files`` (their keys carry a secret part,
see ``uploads.py``, so ``/files/`` cannot reach them)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from repligate.storage.base import Readable, reference


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def path(self, key: str) -> Path | None:
        """The file for ``key``, or None when the key is unknown or points outside root."""
        candidate = (self.root / key).resolve()
        if not candidate.is_relative_to(self.root) or not candidate.is_file():
            return None
        return candidate

    def put(self, key: str, data: bytes, content_type: str) -> str:
        return self._write(key, lambda f: f.write(data))

    def put_file(self, key: str, source: Readable, content_type: str) -> str:
        return self._write(key, lambda f: shutil.copyfileobj(source, f, 1024 * 1024))

    def open(self, key: str) -> BinaryIO:
        path = self.path(key)
        if path is None:
            raise FileNotFoundError(key)
        return path.open("rb")

    def delete(self, key: str) -> None:
        path = self.path(key)
        if path is not None:
            path.unlink(missing_ok=True)

    def url(self, key: str, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/files/{key}"

    def _write(self, key: str, write: Callable[[BinaryIO], object]) -> str:
        target = (self.root / key).resolve()
        if not target.is_relative_to(self.root):
            raise ValueError(f"storage key escapes the root: {key}")
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return reference(key)

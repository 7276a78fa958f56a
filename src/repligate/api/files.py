"""Output files from local storage. No key needed: like Replicate's delivery URLs, the
path holds the prediction's unguessable id (128 random bits).

A download is one trip to a thread: it finds the file, and a small one (most images) is
read at once and sent from memory. Starlette's ``FileResponse`` alone would take four
(its size and dates, then open, read and close), each a hand-off to a thread and back
that costs more than reading a small file. Ranges, HEAD and the headers stay
``FileResponse``'s own.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from starlette.types import Send

from repligate.api.deps import container, in_thread
from repligate.errors import NotFound
from repligate.storage.local import LocalStorage

router = APIRouter()

# Files up to this size are read with their stat and sent from memory.
SMALL_FILE_BYTES = 1024 * 1024


class _OutputFileResponse(FileResponse):
    """A ``FileResponse`` that may already hold the file's bytes (read with its stat)."""

    def __init__(
        self, path: Path, stat: os.stat_result, data: bytes | None, headers: dict[str, str]
    ) -> None:
        super().__init__(path, stat_result=stat, headers=headers)
        self._data = data

    async def _handle_simple(self, send: Send, send_header_only: bool, send_pathsend: bool) -> None:
        if self._data is None or send_pathsend:
            await super()._handle_simple(send, send_header_only, send_pathsend)
            return
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        body = b"" if send_header_only else self._data
        await send({"type": "http.response.body", "body": body, "more_body": False})


def _load(storage: LocalStorage, key: str) -> tuple[Path, os.stat_result, bytes | None] | None:
    path = storage.path(key)
    if path is None:
        return None
    with path.open("rb") as f:
        # The size and dates of the very file read, so headers and body agree.
        stat = os.fstat(f.fileno())
        data = f.read() if stat.st_size <= SMALL_FILE_BYTES else None
    return path, stat, data


@router.get("/files/{key:path}")
async def get_file(key: str, request: Request) -> FileResponse:
    storage = container(request).storage
    found = await in_thread(_load, storage, key) if isinstance(storage, LocalStorage) else None
    if found is None:
        raise NotFound()
    path, stat, data = found
    cache_control = container(request).settings.output_cache_control
    return _OutputFileResponse(path, stat, data, headers={"Cache-Control": cache_control})

"""Output files from storage, whichever backend holds them (``Storage.open``). No key
needed: like Replicate's delivery URLs, the path holds the prediction's unguessable id
(128 random bits). Only outputs are served here; uploads go through the files API, to
their owner.

A download is one trip to a thread: it opens the object, and a small one (most images)
is read at once and sent from memory. Each extra hand-off to a thread and back costs
more than reading a small file; larger files stream in chunks.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Iterator
from typing import BinaryIO

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from repligate.api.deps import container, in_thread
from repligate.errors import NotFound
from repligate.storage.base import Storage

router = APIRouter()

OUTPUTS_PREFIX = "predictions/"
# Objects up to this size are read in the one thread trip and sent from memory.
SMALL_FILE_BYTES = 1024 * 1024
_CHUNK = 256 * 1024


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    with stream:
        while chunk := stream.read(_CHUNK):
            yield chunk


def _load(storage: Storage, key: str) -> tuple[bytes | None, BinaryIO | None, int | None]:
    """(the bytes of a small object, else the open stream, and its size when known)."""
    stream = storage.open(key)
    if stream.seekable():
        size = stream.seek(0, os.SEEK_END)
        stream.seek(0)
    else:
        # A remote object (S3) cannot seek, but knows its size from the response.
        known: int | None = getattr(stream, "size", None)
        if known is None:
            return None, stream, None
        size = known
    if size > SMALL_FILE_BYTES:
        return None, stream, size
    with stream:
        return stream.read(), None, size


@router.get("/files/{key:path}")
async def get_file(key: str, request: Request) -> Response:
    if not key.startswith(OUTPUTS_PREFIX):
        raise NotFound()
    storage = container(request).storage
    try:
        data, stream, size = await in_thread(_load, storage, key)
    except FileNotFoundError:
        raise NotFound() from None
    headers = {"Cache-Control": container(request).settings.output_cache_control}
    media_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
    if data is not None:
        return Response(data, media_type=media_type, headers=headers)
    assert stream is not None
    if size is not None:
        headers["Content-Length"] = str(size)
    return StreamingResponse(_chunks(stream), media_type=media_type, headers=headers)

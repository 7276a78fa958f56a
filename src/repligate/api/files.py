"""Output files from storage, whichever backend holds them (``Storage.open``). No key
needed: like Replicate's delivery URLs, the path holds the prediction's unguessable id
(128 random bits)."""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Iterator
from typing import BinaryIO

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from repligate.api.deps import container
from repligate.errors import NotFound

router = APIRouter()

_CHUNK = 256 * 1024
OUTPUTS_PREFIX = "predictions/"


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    with stream:
        while chunk := stream.read(_CHUNK):
            yield chunk


@router.get("/files/{key:path}")
def get_file(key: str, request: Request) -> StreamingResponse:
    # Only outputs are public here; uploads are served by the files API, to their owner.
    if not key.startswith(OUTPUTS_PREFIX):
        raise NotFound()
    try:
        stream = container(request).storage.open(key)
    except FileNotFoundError:
        raise NotFound() from None
    headers = {"Cache-Control": container(request).settings.output_cache_control}
    if stream.seekable():
        headers["Content-Length"] = str(stream.seek(0, os.SEEK_END))
        stream.seek(0)
    media_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
    return StreamingResponse(_chunks(stream), media_type=media_type, headers=headers)

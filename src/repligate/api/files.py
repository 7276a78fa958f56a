"""Output files from local storage. No key needed: like Replicate's delivery URLs, the
path holds the prediction's unguessable id (128 random bits)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from repligate.api.deps import container
from repligate.errors import NotFound
from repligate.storage.local import LocalStorage

router = APIRouter()


@router.get("/files/{key:path}")
def get_file(key: str, request: Request) -> FileResponse:
    storage = container(request).storage
    path = storage.path(key) if isinstance(storage, LocalStorage) else None
    if path is None:
        raise NotFound()
    cache_control = container(request).settings.output_cache_control
    return FileResponse(path, headers={"Cache-Control": cache_control})

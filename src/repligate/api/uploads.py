"""Uploaded files, as Replicate's files API: ``POST /v1/files`` (multipart), ``GET
/v1/files``, ``GET`` and ``DELETE /v1/files/{id}``, and the bytes at
``/v1/files/{id}/download`` (the owner's key, or a signed link from ``urls.download``).

The multipart body is parsed as it streams in (Starlette's parser, spooled to disk past
1 MB) and refused with 413 as soon as it passes the size cap, whatever Content-Length says.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Annotated, Any, BinaryIO
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from repligate.api.deps import (
    DRAIN_LIMIT_FACTOR,
    CurrentKey,
    api_prefix,
    base_url,
    bearer_token,
    container,
    drain_body,
)
from repligate.api.errors import MalformedBody
from repligate.api.wire import timestamp
from repligate.errors import FileTooLarge, InvalidRequest
from repligate.records import UploadedFile
from repligate.uploads import UploadService

router = APIRouter()

# Room in the body for the boundaries, part headers and the small fields around the file.
_FORM_OVERHEAD = 64 * 1024
_FIELD_MAX = 16 * 1024
_CHUNK = 256 * 1024
_MEDIA_TYPE = re.compile(r"^[\w!#$&^.+-]+/[\w!#$&^.+-]+(\s*;.*)?$")
_NAME_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def uploads_of(request: Request) -> UploadService:
    return container(request).uploads


UploadsDep = Annotated[UploadService, Depends(uploads_of)]


def file_out(request: Request, uploads: UploadService, uploaded: UploadedFile) -> dict[str, Any]:
    """The file object, as Replicate sends it (plus ``urls.download``)."""
    get_url = f"{base_url(request)}{api_prefix(request)}/v1/files/{uploaded.id}"
    return {
        "id": uploaded.id,
        "name": uploaded.name,
        "content_type": uploaded.content_type,
        "size": uploaded.size,
        "etag": uploaded.md5,
        "checksums": {"sha256": uploaded.sha256, "md5": uploaded.md5},
        "metadata": uploaded.metadata,
        "created_at": timestamp(uploaded.created_at),
        "expires_at": timestamp(uploaded.expires_at),
        "urls": {
            "get": get_url,
            "download": f"{get_url}/download?{uploads.signed_query(uploaded)}",
        },
    }


async def _capped(
    stream: AsyncIterator[bytes], limit: int, message: str
) -> AsyncGenerator[bytes, None]:
    """The body, refused as soon as it passes ``limit`` (the rest read and dropped, within
    bounds, so the client gets the 413 rather than a reset)."""
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            await drain_body(stream, limit * DRAIN_LIMIT_FACTOR - total)
            raise FileTooLarge(message)
        yield chunk


def _name(value: str | None) -> str:
    """The file's name without any directory part or control characters."""
    name = _NAME_UNSAFE.sub("", re.split(r"[/\\]", value or "")[-1]).strip()
    return name[:255] or "file"


def _media_type(value: str | None) -> str:
    value = (value or "").strip()
    return value if len(value) <= 255 and _MEDIA_TYPE.match(value) else "application/octet-stream"


def _metadata(value: Any) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    try:
        parsed = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise InvalidRequest("metadata must be a JSON object.")
    return parsed


@router.post("/files")
async def create_file(request: Request, key: CurrentKey, uploads: UploadsDep) -> JSONResponse:
    media_type, _ = parse_options_header(request.headers.get("content-type", ""))
    if media_type != b"multipart/form-data":
        raise MalformedBody("Send the file as multipart/form-data, in a part named content.")
    limit = uploads.max_bytes + _FORM_OVERHEAD
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        waiting = request.headers.get("expect", "").lower() == "100-continue"
        if not waiting and int(declared) <= limit * DRAIN_LIMIT_FACTOR:
            await drain_body(request.stream(), limit * DRAIN_LIMIT_FACTOR)
        raise FileTooLarge(uploads.too_large)
    parser = MultiPartParser(
        request.headers,
        _capped(request.stream(), limit, uploads.too_large),
        max_files=1,
        max_fields=8,
        max_part_size=_FIELD_MAX,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise MalformedBody(f"The multipart body is not valid: {exc.message}") from exc
    try:
        content = form.get("content")
        if not isinstance(content, UploadFile):
            raise MalformedBody("Send the file in a part named content, with a filename.")
        if content.size is not None and content.size > uploads.max_bytes:
            raise FileTooLarge(uploads.too_large)
        filename, media = form.get("filename"), form.get("type")
        uploaded = await asyncio.to_thread(
            uploads.create,
            key,
            content.file,
            name=_name(filename if isinstance(filename, str) else content.filename),
            content_type=_media_type(media if isinstance(media, str) else content.content_type),
            metadata=_metadata(form.get("metadata")),
        )
    finally:
        await form.close()
    return JSONResponse(file_out(request, uploads, uploaded), status_code=201)


@router.get("/files")
def list_files(
    request: Request, key: CurrentKey, uploads: UploadsDep, cursor: str | None = None
) -> dict[str, Any]:
    page = uploads.list(key, cursor=cursor)
    next_url = None
    if page.next_cursor:
        query = urlencode({**request.query_params, "cursor": page.next_cursor})
        next_url = f"{base_url(request)}{request.url.path}?{query}"
    return {
        "next": next_url,
        "previous": None,
        "results": [file_out(request, uploads, f) for f in page.results],
    }


@router.get("/files/{file_id}")
def get_file(file_id: str, request: Request, key: CurrentKey, uploads: UploadsDep) -> JSONResponse:
    return JSONResponse(file_out(request, uploads, uploads.get(key, file_id)))


@router.delete("/files/{file_id}", status_code=204)
def delete_file(file_id: str, key: CurrentKey, uploads: UploadsDep) -> Response:
    uploads.delete(key, file_id)
    return Response(status_code=204)


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    with stream:
        while chunk := stream.read(_CHUNK):
            yield chunk


@router.get("/files/{file_id}/download")
def download_file(
    file_id: str,
    request: Request,
    uploads: UploadsDep,
    expiry: str | None = None,
    signature: str | None = None,
) -> StreamingResponse:
    if expiry is not None or signature is not None:
        uploaded = uploads.by_signature(file_id, expiry or "", signature or "")
    else:
        # A sync route (in a thread): the key is checked here, not by the async dependency.
        key = container(request).service.authenticate(bearer_token(request))
        uploaded = uploads.get(key, file_id)
    stream = uploads.open(uploaded)
    headers = {
        "Content-Length": str(uploaded.size),
        "ETag": f'"{uploaded.md5}"',
        "Cache-Control": "private, max-age=0",
        # Whatever type the uploader declared, a browser neither sniffs, renders inline
        # nor runs it on this origin.
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(uploaded.name)}",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox; default-src 'none'",
    }
    return StreamingResponse(_chunks(stream), media_type=uploaded.content_type, headers=headers)

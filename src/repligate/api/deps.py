"""Dependencies, named once: the container's services, the caller's key, the body."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request

from repligate.api.errors import BodyTooLarge, MalformedBody
from repligate.records import ApiKey
from repligate.service import PredictionService
from repligate.settings import Settings

if TYPE_CHECKING:
    from repligate.app import Container


def container(request: Request) -> Container:
    return request.app.state.container


def settings(request: Request) -> Settings:
    return container(request).settings


def service(request: Request) -> PredictionService:
    return container(request).service


def current_key(request: Request) -> ApiKey:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() not in ("bearer", "token"):
        token = ""
    return container(request).service.authenticate(token.strip() or None)


SettingsDep = Annotated[Settings, Depends(settings)]
ServiceDep = Annotated[PredictionService, Depends(service)]
CurrentKey = Annotated[ApiKey, Depends(current_key)]


async def json_body(request: Request) -> Any:
    """The request body as JSON, read with a size cap (413) and parsed strictly (400)."""
    limit = container(request).settings.max_request_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"The request body is larger than {limit} bytes.")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"The request body is larger than {limit} bytes.")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise MalformedBody("The request body is empty; send a JSON object.")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedBody(f"The request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        # A body like "[[[[..." a few kB long exhausts the parser's stack: a user's
        # mistake (or an attack), not a server fault.
        raise MalformedBody("The request body nests JSON too deeply.") from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


JsonBody = Annotated[Any, Depends(json_body)]


def base_url(request: Request) -> str:
    """Where this server is reached: configured, else as the request reached it."""
    configured = container(request).settings.public_base_url
    return (configured or str(request.base_url)).rstrip("/")


def api_prefix(request: Request) -> str:
    """``/replicate`` for the seed's routes, ``""`` for Replicate's own."""
    return "/replicate" if request.url.path.startswith("/replicate/") else ""

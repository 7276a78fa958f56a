"""Dependencies, named once: the container's services, the caller's key, the body.

Every dependency is ``async def``: FastAPI runs a plain ``def`` dependency in its thread
pool, and each such hop (a hand-off to a thread and back to the event loop) costs about
as much CPU as the rest of a small request. Writes and longer work go to a thread, once
per request where they can (``in_thread``); short reads go through ``service.read``.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

from fastapi import Depends, Request
from starlette.requests import ClientDisconnect

from repligate.api.errors import BodyTooLarge, MalformedBody
from repligate.records import ApiKey
from repligate.service import PredictionService
from repligate.settings import Settings

if TYPE_CHECKING:
    from repligate.app import Container


P = ParamSpec("P")
R = TypeVar("R")


async def in_thread(call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a blocking call (database, disk) in the event loop's thread pool."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(call, *args, **kwargs))


def container(request: Request) -> Container:
    return request.app.state.container


async def settings(request: Request) -> Settings:
    return container(request).settings


async def service(request: Request) -> PredictionService:
    return container(request).service


def bearer_token(request: Request) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (or ``Token <token>``), if any."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() not in ("bearer", "token"):
        return None
    return token.strip() or None


async def current_key(request: Request) -> ApiKey:
    service = container(request).service
    return await service.read(service.authenticate, bearer_token(request))


async def _token(request: Request) -> str | None:
    return bearer_token(request)


SettingsDep = Annotated[Settings, Depends(settings)]
ServiceDep = Annotated[PredictionService, Depends(service)]
CurrentKey = Annotated[ApiKey, Depends(current_key)]
# The bearer token unchecked, for routes that check it together with their own read.
Token = Annotated[str | None, Depends(_token)]


# A client such as urllib sends its whole body before it reads any reply. Refused
# unread, the body meets a closed socket: the kernel answers with a reset, which also
# discards the 413 already sent, and the client reports "connection reset" instead of
# the 413. So the rest of an over-large body is read and dropped first, up to this many
# times the limit and this many seconds; past either the connection is closed anyway.
DRAIN_LIMIT_FACTOR = 4
DRAIN_SECONDS = 30.0


async def json_body(request: Request) -> Any:
    """The request body as JSON, read with a size cap (413) and parsed strictly (400)."""
    limit = container(request).settings.max_request_bytes
    too_large = BodyTooLarge(f"The request body is larger than {limit} bytes.")
    stream = request.stream()
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        # A client waiting for "100 Continue" has sent nothing and now never will; one
        # that declared more than the drain would take is not worth reading for.
        waiting = request.headers.get("expect", "").lower() == "100-continue"
        if not waiting and int(declared) <= limit * DRAIN_LIMIT_FACTOR:
            await drain_body(stream, limit * DRAIN_LIMIT_FACTOR)
        raise too_large
    chunks = []
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            await drain_body(stream, limit * DRAIN_LIMIT_FACTOR - size)
            raise too_large
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


async def drain_body(stream: AsyncIterator[bytes], budget: int) -> None:
    """Read and drop the rest of a refused body: at most ``budget`` bytes, for at most
    DRAIN_SECONDS. The 413 that follows closes the connection (api/errors.py)."""
    drained = 0
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            async for chunk in stream:
                drained += len(chunk)
                if drained > budget:
                    return
    except (TimeoutError, ClientDisconnect):
        return


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


JsonBody = Annotated[Any, Depends(json_body)]


def base_url(request: Request) -> str:
    """Where this server is reached: configured, else as the request reached it."""
    configured = container(request).settings.public_base_url
    if configured:
        return configured.rstrip("/")
    scope = request.scope
    host = next((value for name, value in scope["headers"] if name == b"host"), None)
    root = scope.get("app_root_path", scope.get("root_path", ""))
    server = scope.get("server")
    return _request_base_url(
        scope.get("scheme", "http"), tuple(server) if server else None, host, root
    )


@functools.lru_cache(maxsize=256)
def _request_base_url(
    scheme: str, server: tuple[str, int] | None, host: bytes | None, root_path: str
) -> str:
    """Starlette's ``request.base_url`` from the only parts of the request it reads,
    remembered: building it parses the Host header and a URL on every request."""
    headers = [(b"host", host)] if host is not None else []
    scope = {"scheme": scheme, "server": server, "headers": headers, "root_path": root_path}
    return str(Request({"type": "http", "path": "/", **scope}).base_url).rstrip("/")


def api_prefix(request: Request) -> str:
    """``/replicate`` for the seed's routes, ``""`` for Replicate's own."""
    return "/replicate" if request.scope["path"].startswith("/replicate/") else ""

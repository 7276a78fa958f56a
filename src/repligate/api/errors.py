"""Domain errors -> Replicate's problem responses (``application/problem+json``), in one
table. Anything unexpected is a 500 with no internals; a user's mistake never is."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from repligate.errors import (
    AuthenticationError,
    FileTooLarge,
    InvalidInput,
    InvalidRequest,
    InvalidVersion,
    ModelUnavailable,
    NotFound,
    QueueUnavailable,
    RepligateError,
    StorageUnavailable,
)
from repligate.ratelimit import QuotaExhausted, Throttled, TooManyRunning

log = logging.getLogger(__name__)


class MalformedBody(RepligateError):
    title = "Bad request"


class BodyTooLarge(RepligateError):
    title = "Request body too large"


# Most specific first: the first class the error is an instance of wins.
STATUS_BY_ERROR: list[tuple[type[RepligateError], int]] = [
    (AuthenticationError, 401),
    (NotFound, 404),
    (InvalidVersion, 422),
    (InvalidInput, 422),
    (InvalidRequest, 422),
    (ModelUnavailable, 422),
    (MalformedBody, 400),
    (BodyTooLarge, 413),
    (FileTooLarge, 413),
    (Throttled, 429),
    (TooManyRunning, 429),
    (QuotaExhausted, 402),
    (StorageUnavailable, 503),
    (QueueUnavailable, 503),
]


def problem(status: int, detail: str, title: str | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {}
    if title:
        body["title"] = title
    body["detail"] = detail
    body["status"] = status
    body.update(extra)
    headers = None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    elif status == 413:
        # What is left of the refused body is not read (api/deps.py drains only so much):
        # the connection cannot carry another request.
        headers = {"Connection": "close"}
    return JSONResponse(
        body, status_code=status, media_type="application/problem+json", headers=headers
    )


def status_of(error: RepligateError) -> int:
    for error_class, status in STATUS_BY_ERROR:
        if isinstance(error, error_class):
            return status
    return 400


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RepligateError)
    extra: dict[str, Any] = {}
    if isinstance(exc, InvalidInput):
        extra["invalid_fields"] = [
            {"type": f.type, "field": f.field, "description": f.description}
            for f in exc.invalid_fields
        ]
    if isinstance(exc, Throttled):
        # Replicate's throttle body is the detail alone; Retry-After tells clients (the
        # official one among them) how long to wait.
        response = problem(429, exc.detail)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    title = None if isinstance(exc, NotFound) else exc.title
    return problem(status_of(exc), exc.detail, title, **extra)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        return problem(404, "The requested resource could not be found.")
    return problem(exc.status_code, str(exc.detail))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return problem(500, "The server hit an internal error.", "Internal server error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RepligateError, _domain_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)

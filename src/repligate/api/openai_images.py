"""OpenAI's images API: ``POST /v1/images/generations`` (JSON) and ``POST
/v1/images/edits`` (multipart), for the official ``openai`` client pointed at this server.

Each call is a prediction made by the PredictionService like any other (listed, billed,
streamed, webhooks, ``urls.web``), held open until it ends the way ``Prefer: wait`` holds
(``service.wait``). The mapping is openai_images.py; this module is HTTP only. Errors on
these routes, and only here, come back in OpenAI's shape: ``{"error": {"message",
"type", "param", "code"}}``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from repligate.api.deps import (
    DRAIN_LIMIT_FACTOR,
    api_prefix,
    base_url,
    bearer_token,
    container,
    drain_body,
    in_thread,
    json_body,
)
from repligate.api.errors import BodyTooLarge, MalformedBody, status_of
from repligate.api.limits import limit_creates
from repligate.errors import (
    AuthenticationError,
    InvalidInput,
    ModelUnavailable,
    NotFound,
    RepligateError,
)
from repligate.lifecycle import Status
from repligate.models.spec import ModelSpec
from repligate.openai_images import (
    RESPONSE_FORMATS,
    ImageRequestError,
    edit_input,
    generation_input,
    images_response,
    input_param,
    resolve_model,
)
from repligate.ratelimit import QuotaExhausted, Throttled, TooManyRunning
from repligate.records import ApiKey, Prediction

log = logging.getLogger(__name__)

# Multipart fields other than the two images: a prompt and the options, kept small.
_FIELD_MAX = 64 * 1024


class OpenAIError(Exception):
    """An answer in OpenAI's error shape that no domain error describes (a prediction
    that failed, or is still running when the wait runs out)."""

    def __init__(self, status: int, message: str, type_: str, code: str | None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code


def openai_error(
    status: int, message: str, type_: str, code: str | None = None, param: str | None = None
) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


def _from_domain(exc: RepligateError) -> JSONResponse:
    message = exc.detail.strip()
    if isinstance(exc, AuthenticationError):
        return openai_error(401, message, "invalid_request_error", "invalid_api_key")
    if isinstance(exc, ImageRequestError):
        return openai_error(400, message, "invalid_request_error", exc.code, exc.param)
    if isinstance(exc, NotFound):
        return openai_error(404, message, "invalid_request_error", "model_not_found", "model")
    if isinstance(exc, InvalidInput):
        first = exc.invalid_fields[0] if exc.invalid_fields else None
        param = input_param(first.field) if first and first.field else None
        return openai_error(400, message, "invalid_request_error", "invalid_value", param)
    if isinstance(exc, ModelUnavailable):
        return openai_error(400, message, "invalid_request_error", "model_not_available", "model")
    if isinstance(exc, Throttled):
        response = openai_error(429, message, "requests", "rate_limit_exceeded")
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    if isinstance(exc, QuotaExhausted):
        return openai_error(429, message, "insufficient_quota", "insufficient_quota")
    if isinstance(exc, TooManyRunning):
        return openai_error(429, message, "requests", "rate_limit_exceeded")
    status = status_of(exc)
    if status == 413:
        response = openai_error(413, message, "invalid_request_error", "request_too_large")
        response.headers["Connection"] = "close"
        return response
    return openai_error(400 if status == 422 else status, message, "invalid_request_error")


class OpenAIErrorRoute(APIRoute):
    """Routes whose every error, dependencies' included, answers in OpenAI's shape; the
    app's handlers (Replicate's problem shape) never see them."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except OpenAIError as exc:
                return openai_error(exc.status, exc.message, exc.type, exc.code)
            except RepligateError as exc:
                return _from_domain(exc)
            except RequestValidationError as exc:
                return openai_error(400, str(exc), "invalid_request_error")
            except StarletteHTTPException as exc:
                return openai_error(exc.status_code, str(exc.detail), "invalid_request_error")
            except Exception:
                log.exception("unexpected error on %s %s", request.method, request.url.path)
                return openai_error(500, "The server hit an internal error.", "server_error")

        return handle


router = APIRouter(route_class=OpenAIErrorRoute)


async def _key(request: Request) -> ApiKey:
    service = container(request).service
    key = await service.read(service.authenticate, bearer_token(request))
    await limit_creates(request, key)
    return key


def _model(request: Request, requested: Any) -> ModelSpec:
    settings = container(request).settings
    if requested is not None and not isinstance(requested, str):
        raise ImageRequestError("model must be a string.", param="model")
    return resolve_model(
        container(request).service.registry,
        requested,
        settings.openai_model_aliases,
        settings.openai_default_model,
    )


def _response_format(value: Any) -> str:
    value = value or "url"
    if value not in RESPONSE_FORMATS:
        raise ImageRequestError(
            f"Invalid response_format {value!r}: use 'url' or 'b64_json'.",
            param="response_format",
        )
    return str(value)


def _webhook(spec: ModelSpec, options: dict[str, Any]) -> tuple[str | None, list[str] | None]:
    """The prediction's own ``webhook`` and ``webhook_events_filter``, taken from the
    body (extra_body) unless the model has inputs of those names."""
    properties = spec.schemas["Input"]["properties"]
    webhook = None if "webhook" in properties else options.pop("webhook", None)
    events = None
    if "webhook_events_filter" not in properties:
        events = options.pop("webhook_events_filter", None)
    if isinstance(events, str):  # a multipart field: "start,completed"
        events = [e.strip() for e in events.split(",") if e.strip()]
    allowed = {"start", "output", "logs", "completed"}
    if webhook is not None and not isinstance(webhook, str):
        raise ImageRequestError("webhook must be a URL.", param="webhook")
    if events is not None and (
        not isinstance(events, list) or not set(events) <= allowed or not events
    ):
        raise ImageRequestError(
            "webhook_events_filter takes start, output, logs and completed.",
            param="webhook_events_filter",
        )
    return webhook, events


async def _run(
    request: Request,
    key: ApiKey,
    spec: ModelSpec,
    model_input: dict[str, Any],
    fmt: str,
    webhook: tuple[str | None, list[str] | None],
) -> JSONResponse:
    """Create the prediction, wait for its end, answer with its images."""
    wired = container(request)
    service, seconds = wired.service, float(wired.settings.openai_wait_seconds)
    base, prefix = base_url(request), api_prefix(request)
    prediction = await in_thread(
        service.create,
        key,
        spec,
        model_input,
        webhook=webhook[0],
        webhook_events_filter=webhook[1],
        api_base_url=base + prefix,
        base_url=base,
        api_prefix=prefix,
        wait_seconds=seconds,
        idempotency_key=request.headers.get("idempotency-key"),
    )
    prediction = await service.wait(key, prediction, seconds)
    get_url = f"{base}{prefix}/v1/predictions/{prediction.id}"
    _raise_unless_succeeded(prediction, get_url)
    body = await in_thread(
        images_response,
        prediction,
        fmt,
        storage=wired.storage,
        base_url=base,
        usage=wired.usage,
    )
    # Where the prediction behind this answer is (its logs, timings, web page).
    headers = {"Location": get_url, "X-Prediction-Id": prediction.id}
    return JSONResponse(body, headers=headers)


def _raise_unless_succeeded(prediction: Prediction, get_url: str) -> None:
    if prediction.status is Status.SUCCEEDED:
        return
    if not prediction.status.is_terminal:
        raise OpenAIError(
            504,
            f"Prediction {prediction.id} is still {prediction.status.value} after the "
            f"wait ran out; it goes on, and {get_url} shows it.",
            "server_error",
            "timeout",
        )
    if prediction.status is Status.CANCELED:
        raise OpenAIError(
            500, f"Prediction {prediction.id} was canceled.", "server_error", "canceled"
        )
    raise OpenAIError(
        500,
        f"Prediction {prediction.id} failed: {prediction.error or 'no reason given'}",
        "server_error",
        "prediction_failed",
    )


@router.post("/images/generations")
async def create_image(request: Request) -> JSONResponse:
    key = await _key(request)
    body = await json_body(request)
    if not isinstance(body, dict):
        raise ImageRequestError("The body must be a JSON object.")
    options = dict(body)
    spec = _model(request, options.pop("model", None))
    fmt = _response_format(options.pop("response_format", None))
    webhook = _webhook(spec, options)
    prompt, n, size = options.pop("prompt", None), options.pop("n", None), options.pop("size", None)
    model_input = generation_input(spec, prompt, n, size, options)
    return await _run(request, key, spec, model_input, fmt, webhook)


@router.post("/images/edits")
async def edit_image(request: Request) -> JSONResponse:
    key = await _key(request)
    form = await _form(request)
    try:
        fields: dict[str, Any] = {
            name: value for name, value in form.items() if isinstance(value, str)
        }
        image = await _file(form, "image", required=True)
        mask = await _file(form, "mask", required=False)
    finally:
        await form.close()
    assert image is not None
    edit_model = container(request).settings.openai_edit_model
    spec = _model(request, fields.pop("model", None) or edit_model)
    fmt = _response_format(fields.pop("response_format", None))
    webhook = _webhook(spec, fields)
    model_input = await in_thread(
        edit_input,
        spec,
        image,
        mask,
        fields.pop("prompt", None),
        fields.pop("n", None),
        fields.pop("size", None),
        fields,
    )
    return await _run(request, key, spec, model_input, fmt, webhook)


async def _form(request: Request) -> FormData:
    media_type, _ = parse_options_header(request.headers.get("content-type", ""))
    if media_type != b"multipart/form-data":
        raise MalformedBody("Send images.edit as multipart/form-data.")
    limit = container(request).settings.max_request_bytes
    too_large = f"The request body is larger than {limit} bytes."
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        waiting = request.headers.get("expect", "").lower() == "100-continue"
        if not waiting and int(declared) <= limit * DRAIN_LIMIT_FACTOR:
            await drain_body(request.stream(), limit * DRAIN_LIMIT_FACTOR)
        raise BodyTooLarge(too_large)
    parser = MultiPartParser(
        request.headers,
        _capped(request.stream(), limit, too_large),
        max_files=4,
        max_fields=64,
        max_part_size=_FIELD_MAX,
    )
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise MalformedBody(f"The multipart body is not valid: {exc.message}") from exc


async def _capped(
    stream: AsyncIterator[bytes], limit: int, message: str
) -> AsyncGenerator[bytes, None]:
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            await drain_body(stream, limit * DRAIN_LIMIT_FACTOR - total)
            raise BodyTooLarge(message)
        yield chunk


async def _file(form: FormData, name: str, *, required: bool) -> bytes | None:
    """A file part's bytes; the client names a lone image ``image`` and a list
    ``image[]`` (one is taken: these models edit one image)."""
    parts = [p for p in (*form.getlist(name), *form.getlist(f"{name}[]")) if p is not None]
    files = [p for p in parts if isinstance(p, UploadFile)]
    if not files:
        if required:
            raise ImageRequestError(f"{name} is required, as a file.", param=name)
        return None
    if len(files) > 1:
        raise ImageRequestError(f"Send one {name}: these models edit one image.", param=name)
    return await files[0].read()

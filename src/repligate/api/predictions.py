"""Predictions: create (sync or async), get, list, cancel."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from repligate.api.deps import (
    CurrentKey,
    JsonBody,
    ServiceDep,
    Token,
    api_prefix,
    base_url,
    bearer_token,
    container,
    in_thread,
)
from repligate.api.limits import limit_creates, limit_reads
from repligate.api.wire import (
    ModelPredictionCreate,
    PredictionCreate,
    parse_body,
    prediction_out,
)
from repligate.deadlines import parse_cancel_after
from repligate.errors import InvalidRequest
from repligate.lifecycle import Status
from repligate.models.spec import ModelSpec
from repligate.records import ApiKey, Prediction
from repligate.service import Page, PredictionService

router = APIRouter()

_WAIT = re.compile(r"^wait(?:=(\d+))?$")
# Answer this much before the client's own read timeout (it waits N + 0.5 s).
_WAIT_MARGIN_SECONDS = 0.25


def _wait_seconds(request: Request) -> float | None:
    """Seconds to hold the request, from ``Prefer`` and the route's default."""
    default = container(request).settings.default_wait_seconds
    header = request.headers.get("prefer")
    if header is None:
        # The seed's prefix answers with the finished prediction; Replicate's answers at once.
        return float(default) if api_prefix(request) else None
    for preference in (p.strip() for p in header.split(",")):
        if preference == "respond-async":
            return None
        match = _WAIT.match(preference)
        if match:
            seconds = int(match.group(1)) if match.group(1) else default
            if not 1 <= seconds <= 60:
                raise InvalidRequest("Prefer: wait=N takes a whole number of seconds, 1 to 60.")
            return float(seconds)
    return None


def _respond(request: Request, prediction: Prediction, status_code: int, **kw: Any) -> JSONResponse:
    wired = container(request)
    body = prediction_out(
        prediction,
        storage=wired.storage,
        base_url=base_url(request),
        api_prefix=api_prefix(request),
        links=wired.links,
        **kw,
    )
    return JSONResponse(body, status_code=status_code)


async def _create(
    request: Request,
    service: PredictionService,
    key: ApiKey,
    spec: ModelSpec,
    body: PredictionCreate | ModelPredictionCreate,
) -> JSONResponse:
    wait = _wait_seconds(request)
    cancel_after = request.headers.get("cancel-after")
    webhook_events_filter = body.webhook_events_filter
    if body.webhook is None and body.webhook_completed is not None:
        # The legacy field: a webhook for the completion only.
        webhook_events_filter = webhook_events_filter or ["completed"]
    prediction = await in_thread(
        service.create,
        key,
        spec,
        body.input,
        webhook=body.webhook or body.webhook_completed,
        webhook_events_filter=webhook_events_filter,
        api_base_url=base_url(request) + api_prefix(request),
        cancel_after=parse_cancel_after(cancel_after) if cancel_after is not None else None,
        base_url=base_url(request),
        api_prefix=api_prefix(request),
        wait_seconds=wait,
        idempotency_key=request.headers.get("idempotency-key"),
    )
    if wait is None:
        prediction = await service.upstream_created(key, prediction)
    headers = {"Location": prediction_out_url(request, prediction.id)}
    shown = None
    if wait is not None:
        prediction = await service.wait(key, prediction, max(wait - _WAIT_MARGIN_SECONDS, 0.5))
        headers["Preference-Applied"] = f"wait={int(wait)}"
        if not prediction.status.is_terminal:
            # Replicate answers `starting` when the wait runs out: the official client
            # takes any other status in a sync reply as final.
            shown = Status.STARTING
    finished = prediction.status.is_terminal
    status_code = 200 if api_prefix(request) and finished else 201
    response = _respond(request, prediction, status_code, shown_status=shown)
    response.headers.update(headers)
    return response


def prediction_out_url(request: Request, prediction_id: str) -> str:
    return f"{base_url(request)}{api_prefix(request)}/v1/predictions/{prediction_id}"


# The route clients poll, so it is lean: registered first (FastAPI tries routes in
# order, twice per request), one query (the key's check and the read together), and no
# parameters for FastAPI to solve and validate, which costs about as much as the read:
# the id is taken from the path as matched, and declared for the OpenAPI document.
_ID_PARAMETER = {
    "name": "prediction_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "title": "Prediction Id"},
}


@router.get("/predictions/{prediction_id}", openapi_extra={"parameters": [_ID_PARAMETER]})
async def get_prediction(request: Request) -> JSONResponse:
    await limit_reads(request)  # called, not declared: this route solves no dependencies
    service = container(request).service
    prediction_id: str = request.path_params["prediction_id"]
    prediction = await service.read(service.get_for_token, bearer_token(request), prediction_id)
    return _respond(request, prediction, 200)


@router.post("/predictions", dependencies=[Depends(limit_creates)])
async def create_prediction(
    request: Request, service: ServiceDep, key: CurrentKey, body: JsonBody
) -> JSONResponse:
    parsed = parse_body(PredictionCreate, body)
    spec = service.registry.resolve(parsed.version)
    return await _create(request, service, key, spec, parsed)


@router.post("/models/{owner}/{name}/predictions", dependencies=[Depends(limit_creates)])
async def create_model_prediction(
    owner: str, name: str, request: Request, service: ServiceDep, key: CurrentKey, body: JsonBody
) -> JSONResponse:
    spec = service.registry.model(owner, name)
    parsed = parse_body(ModelPredictionCreate, body)
    return await _create(request, service, key, spec, parsed)


def _timestamp(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidRequest(f"{name} must be an ISO 8601 date-time, got {value!r}") from exc
    if parsed.tzinfo is None:
        raise InvalidRequest(f"{name} must include a time zone (e.g. a trailing Z)")
    return parsed


@router.get("/predictions", dependencies=[Depends(limit_reads)])
async def list_predictions(
    request: Request,
    service: ServiceDep,
    token: Token,
    cursor: str | None = None,
    created_after: str | None = None,
    created_before: str | None = None,
) -> dict[str, Any]:
    def read() -> Page:
        # The key first, as everywhere: a bad token is a 401 whatever the query says.
        key = service.authenticate(token)
        return service.list(
            key,
            cursor=cursor,
            created_after=_timestamp("created_after", created_after),
            created_before=_timestamp("created_before", created_before),
        )

    page = await in_thread(read)
    storage, links = container(request).storage, container(request).links
    base, prefix = base_url(request), api_prefix(request)

    def page_url(page_cursor: str | None) -> str | None:
        if page_cursor is None:
            return None
        query = urlencode({**request.query_params, "cursor": page_cursor})
        return f"{base}{request.url.path}?{query}"

    return {
        "next": page_url(page.next_cursor),
        "previous": page_url(page.previous_cursor),
        "results": [
            prediction_out(p, storage=storage, base_url=base, api_prefix=prefix, links=links)
            for p in page.results
        ],
    }


@router.post("/predictions/{prediction_id}/cancel", dependencies=[Depends(limit_reads)])
async def cancel_prediction(
    prediction_id: str, request: Request, service: ServiceDep, token: Token
) -> JSONResponse:
    def cancel() -> Prediction:
        return service.cancel(service.authenticate(token), prediction_id)

    return _respond(request, await in_thread(cancel), 200)

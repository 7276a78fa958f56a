"""The wire schemas: request bodies, and the prediction object as Replicate sends it (plus
the seed's ``created`` and ``data``). One mapper each way; rows never reach the wire."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from repligate.errors import InvalidField, InvalidInput
from repligate.lifecycle import Status
from repligate.links import WebLinks
from repligate.models.spec import ModelSpec
from repligate.records import Prediction
from repligate.storage.base import Storage, resolve_output

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")

WebhookEvent = Literal["start", "output", "logs", "completed"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    input: dict[str, Any]
    webhook: str | None = None
    webhook_events_filter: list[WebhookEvent] | None = None
    # Sent by the official client when given; accepted, as Replicate does.
    webhook_completed: str | None = None
    stream: bool | None = None


class PredictionCreate(_Body):
    version: str


class ModelPredictionCreate(_Body):
    pass


B = TypeVar("B", bound=_Body)


def parse_body(model: type[B], body: Any) -> B:
    """Validate a create body; problems come back in Replicate's invalid_fields shape."""
    if not isinstance(body, dict):
        raise InvalidInput([InvalidField("invalid_type", "", "The body must be a JSON object")])
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = ".".join(str(p) for p in error["loc"])
            if error["type"] == "missing":
                problems.append(InvalidField("required", "", f"{name} is required"))
            elif error["type"] == "extra_forbidden":
                # Replicate leaves `field` empty here; naming it lets a client point at it.
                allowed = ", ".join(sorted(model.model_fields))
                problems.append(
                    InvalidField(
                        "additional_property_not_allowed",
                        name,
                        f"Additional property {name} is not allowed (the body takes {allowed})",
                    )
                )
            else:
                problems.append(InvalidField("invalid_type", name, error["msg"]))
        raise InvalidInput(problems) from exc


def timestamp(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with microseconds and a Z, as Replicate writes them (the values
    are UTC already; isoformat is several times quicker than strftime)."""
    if value is None:
        return None
    return value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def output_urls(output: Any) -> list[str]:
    if isinstance(output, str):
        return [output]
    if isinstance(output, list):
        return [item for item in output if isinstance(item, str)]
    return []


def prediction_out(
    prediction: Prediction,
    *,
    storage: Storage,
    base_url: str,
    api_prefix: str,
    links: WebLinks,
    shown_status: Status | None = None,
) -> dict[str, Any]:
    """The prediction object. ``shown_status`` lets a timed-out sync reply say `starting`,
    the one status the official client keeps polling on."""
    get_url = f"{base_url}{api_prefix}/v1/predictions/{prediction.id}"
    output = resolve_output(prediction.output, storage, base_url)
    status = shown_status or prediction.status
    metrics: dict[str, float | int] = {}
    if prediction.status.is_terminal:
        if prediction.predict_time is not None:
            metrics["predict_time"] = round(prediction.predict_time, 6)
        if prediction.total_time is not None:
            metrics["total_time"] = round(prediction.total_time, 6)
    succeeded = prediction.status is Status.SUCCEEDED
    if succeeded:
        # Replicate reports it for image models; resellers bill per image from it.
        images = [u for u in output_urls(output) if u.lower().endswith(_IMAGE_SUFFIXES)]
        if images:
            metrics["image_count"] = len(images)
    body = {
        "id": prediction.id,
        "model": prediction.model,
        "version": prediction.version,
        "input": prediction.input,
        "logs": prediction.logs,
        # Structured progress beside the tqdm lines in logs (None before the first step).
        "progress": prediction.progress.as_json() if prediction.progress else None,
        "output": output,
        "data_removed": prediction.data_removed,
        "error": prediction.error,
        "status": status.value,
        "source": prediction.source,
        "created_at": timestamp(prediction.created_at),
        "started_at": timestamp(prediction.started_at),
        "completed_at": timestamp(prediction.completed_at),
        "urls": {
            "get": get_url,
            "cancel": f"{get_url}/cancel",
            # Signed: only the owner sees this answer, and the page shows the inputs.
            "web": links.signed_url(base_url, prediction.id),
            # Signed the same way, so a browser's EventSource (no headers) can open it.
            "stream": f"{get_url}/stream?{links.signed_query(prediction.id)}",
        },
        "metrics": metrics,
        "webhook": prediction.webhook,
        "webhook_events_filter": prediction.webhook_events_filter,
        # The seed document's fields (OpenAI's image response shape).
        "created": int(prediction.created_at.timestamp()),
        "data": [{"url": url} for url in output_urls(output)] if succeeded else [],
    }
    if prediction.deadline is not None:
        body["deadline"] = timestamp(prediction.deadline)
    return body


def version_out(spec: ModelSpec) -> dict[str, Any]:
    return {
        "id": spec.version,
        "created_at": spec.version_created_at,
        "cog_version": spec.cog_version,
        "openapi_schema": spec.openapi_schema(),
    }


def model_out(spec: ModelSpec, base_url: str, run_count: int = 0) -> dict[str, Any]:
    return {
        "url": f"{base_url}/models/{spec.ref}",
        "owner": spec.owner,
        "name": spec.name,
        "description": spec.description,
        "visibility": "public",
        "github_url": None,
        "paper_url": None,
        "license_url": None,
        "run_count": run_count,
        "cover_image_url": None,
        "default_example": None,
        "latest_version": version_out(spec),
    }

"""Domain records: what the service hands to the API layer (no ORM, no HTTP)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from repligate.lifecycle import Status


@dataclass(frozen=True)
class RunProgress:
    """How far a run is: the denoising step of the current pass (``current`` of
    ``total``) and, for animations, the frame. The same shape is stored and sent."""

    current: int
    total: int
    frame: int | None = None
    frames: int | None = None

    @property
    def percentage(self) -> float:
        """Of the current denoising pass, rounded to 0.1 (0 when nothing is known)."""
        return round(100.0 * self.current / self.total, 1) if self.total > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "current": self.current,
            "total": self.total,
            "percentage": self.percentage,
        }
        if self.frames is not None:
            body["frame"] = {"current": self.frame or 0, "total": self.frames}
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any] | None) -> RunProgress | None:
        if not body:
            return None
        frame = body.get("frame") or {}
        return cls(
            current=int(body.get("current", 0)),
            total=int(body.get("total", 0)),
            frame=frame.get("current"),
            frames=frame.get("total"),
        )


@dataclass(frozen=True)
class Prediction:
    id: str
    api_key_id: str
    model: str
    version: str
    input: dict[str, Any]
    output: Any
    logs: str
    error: str | None
    status: Status
    source: str
    webhook: str | None
    webhook_events_filter: list[str] | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    predict_time: float | None
    total_time: float | None
    # When Cancel-After cancels it, if it was given.
    deadline: datetime | None = None
    # Where its creator reached the server: the base of the URLs in its webhook bodies.
    base_url: str | None = None
    api_prefix: str = ""
    # Retention removed its input, output and logs (retention.py).
    data_removed: bool = False
    # Where its run stands (the last step and frame reported), None before any.
    progress: RunProgress | None = None
    # How many times a worker claimed it (more than 1: a lost worker's run was repeated).
    attempts: int = 0

    @classmethod
    def starting(
        cls,
        *,
        id: str,
        api_key_id: str,
        model: str,
        version: str,
        input: dict[str, Any],
        created_at: datetime,
        webhook: str | None = None,
        webhook_events_filter: list[str] | None = None,
        deadline: datetime | None = None,
        base_url: str | None = None,
        api_prefix: str = "",
    ) -> Prediction:
        """A just-created prediction: queued, nothing run yet."""
        return cls(
            id=id,
            api_key_id=api_key_id,
            model=model,
            version=version,
            input=input,
            output=None,
            logs="",
            error=None,
            status=Status.STARTING,
            source="api",
            webhook=webhook,
            webhook_events_filter=webhook_events_filter,
            created_at=created_at,
            started_at=None,
            completed_at=None,
            predict_time=None,
            total_time=None,
            deadline=deadline,
            base_url=base_url,
            api_prefix=api_prefix,
        )


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    token_prefix: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class UploadedFile:
    """A file a key uploaded (``POST /v1/files``), or a large data-URI input stored as one."""

    id: str
    api_key_id: str
    name: str
    content_type: str
    size: int
    sha256: str
    md5: str
    metadata: dict[str, Any]
    # Where the bytes are in storage; never shown (it holds a secret part).
    storage_key: str
    created_at: datetime
    expires_at: datetime
    deleted_at: datetime | None
    content_removed: bool

    def gone(self, now: datetime) -> bool:
        """Deleted or expired: not shown, not served, not usable as an input."""
        return self.deleted_at is not None or now >= self.expires_at


@dataclass(frozen=True)
class WebhookAttempt:
    """One try of a webhook delivery: the answer's status code, or why there was none."""

    attempted_at: datetime
    url: str
    status_code: int | None
    error: str | None
    seconds: float


@dataclass(frozen=True)
class WebhookDelivery:
    """One webhook event of a prediction (a row of the outbox) and where it stands."""

    id: str
    seq: int
    prediction_id: str
    event: str
    url: str
    # pending, delivered, failed, or superseded (a newer output/logs event replaced it)
    state: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    # The prediction's changing fields at this event (store/webhooks.snapshot).
    snapshot: dict[str, Any] | None = None


@dataclass(frozen=True)
class KeyLimits:
    """A key's own limits (``repligate keys limits``). Rate limits are in the limits
    library's notation ("600/minute"), None for the server's default, "none" for no
    limit; the quota and the cap are None when the key has none."""

    api_key_id: str
    create_rate_limit: str | None = None
    read_rate_limit: str | None = None
    prediction_quota: int | None = None
    # The quota counts predictions created in this many seconds back; None: ever.
    quota_window_seconds: int | None = None
    max_concurrent: int | None = None


@dataclass(frozen=True)
class Usage:
    """What one finished prediction used and produced (usage.py measures it)."""

    prediction_id: str
    api_key_id: str
    model: str
    status: str
    created_at: datetime
    completed_at: datetime
    # Seconds the model ran; None when it never ran.
    predict_time: float | None
    # Still images; animations and videos count as frames instead.
    image_count: int
    # Width × height of every image and every frame.
    pixels: int
    # Each image's (or frame's) pixels × the denoising steps it took.
    pixel_steps: int
    frames: int
    video_seconds: float
    output_bytes: int

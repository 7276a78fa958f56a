"""Database rows. Never sent on the wire as is: ``api/wire.py`` maps them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # sha256 of the token: tokens are 256-bit random, so a fast hash is enough at rest.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters of the token, to tell keys apart in listings.
    token_prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class PredictionRow(Base):
    __tablename__ = "predictions"
    __table_args__ = (
        Index("ix_predictions_key_created", "api_key_id", "created_at", "id"),
        Index("ix_predictions_status", "status"),
        Index("ix_predictions_completed", "completed_at"),
        Index("ix_predictions_key_status", "api_key_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    model: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(64))
    # As the caller sent it (Replicate echoes input without defaults); what the runner
    # gets (defaults filled) is derived from it, so a large data URI is stored once.
    input: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Files appear as "storage:<key>" strings; the wire mapper makes them URLs.
    output: Mapped[Any] = mapped_column(JSON, nullable=True)
    logs: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16), default="api")
    webhook: Mapped[str | None] = mapped_column(Text, nullable=True)
    webhook_events_filter: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    predict_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    total_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    # When Cancel-After cancels it (null: no deadline).
    deadline: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Where its creator reached the server (base URL and route prefix): webhook bodies,
    # sent with no request at hand, carry the same URLs as that creator's GET.
    base_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    api_prefix: Mapped[str | None] = mapped_column(String(32), nullable=True)

    # Its input, output (and files) and logs were removed by retention (retention.py).
    data_removed: Mapped[bool] = mapped_column(Boolean, default=False)
    # The last step (and frame) its runner reported: records.RunProgress as JSON.
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The worker running it and until when its lease holds (leases.py); how many times a
    # worker claimed it (a rerun after a lost worker counts again).
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class FileRow(Base):
    """An uploaded file. Kept after it is deleted or expires (its bytes are removed), so a
    URL naming it is still known as this server's own."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_key_created", "api_key_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    name: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    md5: Mapped[str] = mapped_column(String(32))
    # "metadata" is taken by SQLAlchemy's declarative base.
    user_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    storage_key: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    content_removed: Mapped[bool] = mapped_column(Boolean, default=False)


class WebhookDeliveryRow(Base):
    """One webhook event to deliver (the outbox): written in the same transaction as the
    change it tells of, so a delivery survives a crash right after that change."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
        Index("ix_webhook_deliveries_prediction", "prediction_id", "seq"),
    )

    # The webhook-id header: the same across retries of one delivery.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Orders one prediction's events as they were written.
    seq: Mapped[int] = mapped_column(BigInteger)
    prediction_id: Mapped[str] = mapped_column(ForeignKey("predictions.id"))
    event: Mapped[str] = mapped_column(String(16))
    url: Mapped[str] = mapped_column(Text)
    # pending, delivered, failed, superseded (a newer output/logs event replaced it)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # What of the prediction changes (status, output, logs ...) as it stood at this event:
    # the body is the prediction then, even when sent after a restart. Cleared once the
    # delivery is final.
    snapshot: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class WebhookAttemptRow(Base):
    """One try of a delivery, for the delivery log."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "id"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id"))
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    url: Mapped[str] = mapped_column(Text)
    status_code: Mapped[int | None] = mapped_column(nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    seconds: Mapped[float] = mapped_column(Float)


class WebhookSecretRow(Base):
    """A key's webhook signing secret (``whsec_...``), made on first use."""

    __tablename__ = "webhook_secrets"

    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), primary_key=True)
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class KeyLimitsRow(Base):
    """A key's own limits (``repligate keys limits``); a null column takes the server's
    default (rate limits) or means none (quota, concurrency)."""

    __tablename__ = "key_limits"

    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), primary_key=True)
    create_rate_limit: Mapped[str | None] = mapped_column(String(200), nullable=True)
    read_rate_limit: Mapped[str | None] = mapped_column(String(200), nullable=True)
    prediction_quota: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The quota counts predictions created in this many seconds back; null: ever.
    quota_window_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_concurrent: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class UsageRow(Base):
    """What one finished prediction used and produced (usage.py): one row each."""

    __tablename__ = "usage"
    __table_args__ = (
        Index("ix_usage_completed", "completed_at"),
        Index("ix_usage_key_completed", "api_key_id", "completed_at"),
    )

    prediction_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    model: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # None when it never ran (canceled or failed while queued).
    predict_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    image_count: Mapped[int] = mapped_column(Integer)
    pixels: Mapped[int] = mapped_column(BigInteger)
    pixel_steps: Mapped[int] = mapped_column(BigInteger)
    frames: Mapped[int] = mapped_column(Integer)
    video_seconds: Mapped[float] = mapped_column(Float)
    output_bytes: Mapped[int] = mapped_column(BigInteger)


class RelayedPredictionRow(Base):
    """A prediction run through the upstream relay: which upstream prediction it is, and
    with which upstream key (by fingerprint) it was created. The row exists before the
    upstream create is sent, so a restart finds every relayed prediction again."""

    __tablename__ = "relayed_predictions"

    prediction_id: Mapped[str] = mapped_column(ForeignKey("predictions.id"), primary_key=True)
    upstream_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    key_fingerprint: Mapped[str | None] = mapped_column(String(16), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class UpstreamKeyRow(Base):
    """The state of one upstream key of the pool, as the relay last saw it (for
    ``repligate upstream status``). Keys are known by fingerprint only, never by token."""

    __tablename__ = "upstream_keys"

    fingerprint: Mapped[str] = mapped_column(String(16), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime())


class IdempotencyKeyRow(Base):
    """A create retried with the same ``Idempotency-Key`` (per API key) answers with the
    prediction the first one made, instead of making another."""

    __tablename__ = "idempotency_keys"

    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    # No foreign key: the key is claimed before the prediction is inserted, so two racing
    # creates agree on one id before either makes anything.
    prediction_id: Mapped[str] = mapped_column(String(32))

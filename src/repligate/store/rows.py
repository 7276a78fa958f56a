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

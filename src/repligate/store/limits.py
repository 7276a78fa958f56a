"""Per-key limits: read with the key's check (by token hash), set by the CLI, and the
counts that quotas and concurrency caps compare with."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, func, or_, select
from sqlalchemy.orm import Session

from repligate.lifecycle import Status
from repligate.records import KeyLimits
from repligate.store.db import Db
from repligate.store.rows import ApiKeyRow, KeyLimitsRow, PredictionRow

_KEYS = cast(Table, ApiKeyRow.__table__)
_LIMITS = cast(Table, KeyLimitsRow.__table__)
_P = cast(Table, PredictionRow.__table__).c
# The active key with this token hash and its own limits (if any), in one statement.
_FOR_TOKEN = (
    select(_KEYS.c.id, _LIMITS)
    .select_from(_KEYS.outerjoin(_LIMITS, _LIMITS.c.api_key_id == _KEYS.c.id))
    .where(_KEYS.c.token_hash == bindparam("token_hash"), _KEYS.c.revoked_at.is_(None))
)


def _record(key_id: str, row: Any) -> KeyLimits:
    if row is None or row.api_key_id is None:
        return KeyLimits(api_key_id=key_id)
    return KeyLimits(
        api_key_id=key_id,
        create_rate_limit=row.create_rate_limit,
        read_rate_limit=row.read_rate_limit,
        prediction_quota=row.prediction_quota,
        quota_window_seconds=row.quota_window_seconds,
        max_concurrent=row.max_concurrent,
    )


def for_token(session: Db, token_hash: str) -> KeyLimits | None:
    """The limits of the active key with this token hash; None if there is no such key."""
    row = session.execute(_FOR_TOKEN, {"token_hash": token_hash}).one_or_none()
    return _record(row.id, row) if row is not None else None


def for_key(session: Session, key_id: str) -> KeyLimits:
    return _record(key_id, session.get(KeyLimitsRow, key_id, populate_existing=True))


def save(session: Session, limits: KeyLimits, now: datetime) -> None:
    row = session.get(KeyLimitsRow, limits.api_key_id)
    if row is None:
        row = KeyLimitsRow(api_key_id=limits.api_key_id)
        session.add(row)
    row.create_rate_limit = limits.create_rate_limit
    row.read_rate_limit = limits.read_rate_limit
    row.prediction_quota = limits.prediction_quota
    row.quota_window_seconds = limits.quota_window_seconds
    row.max_concurrent = limits.max_concurrent
    row.updated_at = now
    session.commit()


def count_for_quota(session: Db, key_id: str, since: datetime | None) -> int:
    """The key's predictions that count against a quota: all created (since ``since``)
    except those that ended without ever running (canceled or failed while queued)."""
    ran_or_may_run = or_(
        _P.started_at.is_not(None),
        _P.status.in_([Status.STARTING.value, Status.PROCESSING.value]),
    )
    condition = and_(_P.api_key_id == key_id, ran_or_may_run)
    if since is not None:
        condition = and_(condition, _P.created_at >= since)
    return session.scalar(select(func.count()).where(condition)) or 0


def count_unfinished(session: Db, key_id: str) -> int:
    """The key's predictions queued or running."""
    query = select(func.count()).where(
        _P.api_key_id == key_id,
        _P.status.in_([Status.STARTING.value, Status.PROCESSING.value]),
    )
    return session.scalar(query) or 0


def keys_named(session: Session, id_or_name: str) -> list[tuple[str, str]]:
    """(id, name) of the active keys with this id or name."""
    query = select(_KEYS.c.id, _KEYS.c.name).where(
        (_KEYS.c.id == id_or_name) | (_KEYS.c.name == id_or_name),
        _KEYS.c.revoked_at.is_(None),
    )
    return [(row.id, row.name) for row in session.execute(query)]

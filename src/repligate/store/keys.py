"""API keys: created with a random token, stored as its sha256, looked up by hash."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.orm import Session

from repligate.records import ApiKey
from repligate.store.db import Db
from repligate.store.rows import ApiKeyRow

TOKEN_PREFIX = "r8_"
_TABLE = cast(Table, ApiKeyRow.__table__)
# A Core statement built once: the lookup runs on every authenticated request.
_FIND_ACTIVE = select(_TABLE).where(
    _TABLE.c.token_hash == bindparam("token_hash"), _TABLE.c.revoked_at.is_(None)
)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _record(row: Any) -> ApiKey:
    return ApiKey(
        id=row.id,
        name=row.name,
        token_prefix=row.token_prefix,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def create(session: Session, *, name: str) -> tuple[ApiKey, str]:
    """Make a key; the token is returned once and never stored in clear."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiKeyRow(
        id="key_" + secrets.token_hex(8),
        name=name,
        token_hash=hash_token(token),
        token_prefix=token[:10],
        created_at=datetime.now(UTC),
    )
    session.add(row)
    session.commit()
    return _record(row), token


def find_active(session: Db, token: str) -> ApiKey | None:
    row = session.execute(_FIND_ACTIVE, {"token_hash": hash_token(token)}).one_or_none()
    return _record(row) if row is not None else None


def list_all(session: Session) -> list[ApiKey]:
    rows = session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at))
    return [_record(r) for r in rows]


def count_active(session: Session) -> int:
    return (
        session.scalar(
            select(func.count()).select_from(ApiKeyRow).where(ApiKeyRow.revoked_at.is_(None))
        )
        or 0
    )


def revoke(session: Session, *, key_id_or_name: str) -> int:
    """Revoke by id or by name; returns how many keys were revoked."""
    result = session.execute(
        update(ApiKeyRow)
        .where(
            (ApiKeyRow.id == key_id_or_name) | (ApiKeyRow.name == key_id_or_name),
            ApiKeyRow.revoked_at.is_(None),
        )
        .values(revoked_at=datetime.now(UTC))
    )
    session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]

"""Rows of the upstream relay: relayed predictions (their upstream id), the upstream key
states, and idempotency keys of creates."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Table, delete, select, update
from sqlalchemy.exc import IntegrityError

from repligate.store.db import Db
from repligate.store.rows import IdempotencyKeyRow, RelayedPredictionRow, UpstreamKeyRow

_RELAYED = cast(Table, RelayedPredictionRow.__table__)
_KEYS = cast(Table, UpstreamKeyRow.__table__)
_IDEMPOTENCY = cast(Table, IdempotencyKeyRow.__table__)


@dataclass(frozen=True)
class Relayed:
    prediction_id: str
    upstream_id: str | None
    key_fingerprint: str | None


@dataclass(frozen=True)
class KeyState:
    fingerprint: str
    state: str
    reason: str | None
    changed_at: datetime


def add_relayed(session: Db, prediction_id: str, now: datetime) -> None:
    """Record that ``prediction_id`` goes upstream (before the upstream create is sent);
    a second call for the same prediction keeps the first row."""
    exists = session.execute(
        select(_RELAYED.c.prediction_id).where(_RELAYED.c.prediction_id == prediction_id)
    ).first()
    if exists is None:
        session.execute(_RELAYED.insert().values(prediction_id=prediction_id, created_at=now))
    session.commit()


def set_upstream(session: Db, prediction_id: str, upstream_id: str, fingerprint: str) -> None:
    session.execute(
        update(_RELAYED)
        .where(_RELAYED.c.prediction_id == prediction_id)
        .values(upstream_id=upstream_id, key_fingerprint=fingerprint)
    )
    session.commit()


def relayed(session: Db, prediction_ids: list[str]) -> dict[str, Relayed]:
    """The relay rows of these predictions (those that have one)."""
    if not prediction_ids:
        return {}
    rows = session.execute(select(_RELAYED).where(_RELAYED.c.prediction_id.in_(prediction_ids)))
    return {
        row.prediction_id: Relayed(row.prediction_id, row.upstream_id, row.key_fingerprint)
        for row in rows
    }


def save_key_state(
    session: Db, fingerprint: str, state: str, reason: str | None, now: datetime
) -> None:
    session.execute(delete(_KEYS).where(_KEYS.c.fingerprint == fingerprint))
    session.execute(
        _KEYS.insert().values(fingerprint=fingerprint, state=state, reason=reason, changed_at=now)
    )
    session.commit()


def key_states(session: Db) -> dict[str, KeyState]:
    rows = session.execute(select(_KEYS))
    return {
        row.fingerprint: KeyState(row.fingerprint, row.state, row.reason, row.changed_at)
        for row in rows
    }


def find_idempotent(session: Db, api_key_id: str, key: str) -> str | None:
    """The prediction an earlier create with this idempotency key made, if any."""
    found = session.execute(
        select(_IDEMPOTENCY.c.prediction_id).where(
            _IDEMPOTENCY.c.api_key_id == api_key_id, _IDEMPOTENCY.c.key == key
        )
    ).first()
    return found[0] if found is not None else None


def claim_idempotent(session: Db, api_key_id: str, key: str, prediction_id: str) -> str:
    """Tie ``key`` to ``prediction_id``; if a racing create tied it first, its id."""
    try:
        row = {"api_key_id": api_key_id, "key": key, "prediction_id": prediction_id}
        session.execute(_IDEMPOTENCY.insert().values(**row))
        session.commit()
    except IntegrityError:
        session.rollback()
        earlier = find_idempotent(session, api_key_id, key)
        if earlier is None:
            raise
        return earlier
    return prediction_id


def count_in_flight(session: Db) -> int:
    """Relayed predictions not yet ended."""
    from sqlalchemy import func

    from repligate.store.rows import PredictionRow

    query = (
        select(func.count())
        .select_from(_RELAYED)
        .join(PredictionRow, PredictionRow.id == _RELAYED.c.prediction_id)
        .where(PredictionRow.status.in_(["starting", "processing"]))
    )
    return session.scalar(query) or 0

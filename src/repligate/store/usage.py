"""Usage rows: one per finished prediction, written once; the sums the report prices."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Table, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from repligate import lifecycle
from repligate.records import Usage
from repligate.store.rows import ApiKeyRow, PredictionRow, UsageRow

_P = cast(Table, PredictionRow.__table__).c
_U = cast(Table, UsageRow.__table__).c


def insert(session: Session, usage: Usage) -> bool:
    """Record ``usage``; False when the prediction was recorded already (by this
    process's recorder or another's catch-up)."""
    if session.get(UsageRow, usage.prediction_id) is not None:
        return False
    session.add(UsageRow(**usage.__dict__))
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        return False
    return True


def get(session: Session, prediction_id: str) -> Usage | None:
    row = session.get(UsageRow, prediction_id, populate_existing=True)
    if row is None:
        return None
    return Usage(**{name: getattr(row, name) for name in Usage.__dataclass_fields__})


def unrecorded(session: Session, *, limit: int) -> list[str]:
    """Ids of finished predictions with no usage row yet, oldest first."""
    query = (
        select(_P.id)
        .select_from(PredictionRow.__table__.outerjoin(UsageRow, _U.prediction_id == _P.id))
        .where(_U.prediction_id.is_(None), _P.status.in_([s.value for s in lifecycle.TERMINAL]))
        .order_by(_P.completed_at)
        .limit(limit)
    )
    return list(session.scalars(query))


@dataclass(frozen=True)
class Totals:
    """The sums of one key's use of one model."""

    api_key_id: str
    key_name: str
    model: str
    predictions: int
    ran: int
    predict_seconds: float
    images: int
    pixel_steps: int
    frames: int
    video_seconds: float
    output_bytes: int


def totals(
    session: Session, *, since: datetime, until: datetime, key: str | None = None
) -> list[Totals]:
    """Sums per (key, model) of the predictions completed in [since, until); ``key`` (an
    id or a name) keeps one key's."""
    keys = cast(Table, ApiKeyRow.__table__).c
    query = (
        select(
            _U.api_key_id,
            keys.name,
            _U.model,
            func.count(),
            func.count(_U.predict_time),
            func.coalesce(func.sum(_U.predict_time), 0.0),
            func.sum(_U.image_count),
            func.sum(_U.pixel_steps),
            func.sum(_U.frames),
            func.sum(_U.video_seconds),
            func.sum(_U.output_bytes),
        )
        .join(ApiKeyRow, keys.id == _U.api_key_id)
        .where(_U.completed_at >= since, _U.completed_at < until)
        .group_by(_U.api_key_id, keys.name, _U.model)
        .order_by(keys.name, _U.model)
    )
    if key is not None:
        query = query.where((keys.id == key) | (keys.name == key))
    return [
        Totals(
            api_key_id=row[0],
            key_name=row[1],
            model=row[2],
            predictions=int(row[3]),
            ran=int(row[4]),
            predict_seconds=float(row[5]),
            images=int(row[6] or 0),
            pixel_steps=int(row[7] or 0),
            frames=int(row[8] or 0),
            video_seconds=float(row[9] or 0.0),
            output_bytes=int(row[10] or 0),
        )
        for row in session.execute(query)
    ]

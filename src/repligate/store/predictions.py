"""Prediction rows: insert, read, page, and status changes as compare-and-set."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from repligate import lifecycle
from repligate.lifecycle import Status
from repligate.records import Prediction
from repligate.store.rows import PredictionRow


def _record(row: PredictionRow) -> Prediction:
    return Prediction(
        id=row.id,
        api_key_id=row.api_key_id,
        model=row.model,
        version=row.version,
        input=row.input,
        output=row.output,
        logs=row.logs,
        error=row.error,
        status=Status(row.status),
        source=row.source,
        webhook=row.webhook,
        webhook_events_filter=row.webhook_events_filter,
        created_at=row.created_at,
        started_at=row.started_at,
        completed_at=row.completed_at,
        predict_time=row.predict_time,
        total_time=row.total_time,
    )


def insert(session: Session, prediction: Prediction) -> None:
    session.add(
        PredictionRow(
            id=prediction.id,
            api_key_id=prediction.api_key_id,
            model=prediction.model,
            version=prediction.version,
            input=prediction.input,
            output=prediction.output,
            logs=prediction.logs,
            error=prediction.error,
            status=prediction.status.value,
            source=prediction.source,
            webhook=prediction.webhook,
            webhook_events_filter=prediction.webhook_events_filter,
            created_at=prediction.created_at,
        )
    )
    session.commit()


def get(session: Session, prediction_id: str) -> Prediction | None:
    row = session.get(PredictionRow, prediction_id, populate_existing=True)
    return _record(row) if row else None


def page(
    session: Session,
    *,
    api_key_id: str,
    limit: int,
    before: tuple[datetime, str] | None = None,
    after: tuple[datetime, str] | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> list[Prediction]:
    """Newest first. ``before`` / ``after``: the (created_at, id) of the last / first row of
    the page already shown, to page forwards (older) or backwards (newer)."""
    query = select(PredictionRow).where(PredictionRow.api_key_id == api_key_id)
    if before is not None:
        at, last_id = before
        query = query.where(
            or_(
                PredictionRow.created_at < at,
                and_(PredictionRow.created_at == at, PredictionRow.id < last_id),
            )
        )
    if after is not None:
        at, first_id = after
        query = query.where(
            or_(
                PredictionRow.created_at > at,
                and_(PredictionRow.created_at == at, PredictionRow.id > first_id),
            )
        )
    if created_after is not None:
        query = query.where(PredictionRow.created_at >= created_after)
    if created_before is not None:
        query = query.where(PredictionRow.created_at < created_before)
    if after is not None:
        query = query.order_by(PredictionRow.created_at.asc(), PredictionRow.id.asc())
        return [_record(r) for r in reversed(list(session.scalars(query.limit(limit))))]
    query = query.order_by(PredictionRow.created_at.desc(), PredictionRow.id.desc())
    return [_record(r) for r in session.scalars(query.limit(limit))]


def _clean_text(text: str) -> str:
    return text.replace("\x00", "\ufffd")


def _clean(fields: dict[str, Any]) -> dict[str, Any]:
    """Text a model or its input put into logs or error may hold NUL, which PostgreSQL's
    text cannot store: it becomes U+FFFD, so no input can break a write."""
    for name in ("logs", "error"):
        if isinstance(fields.get(name), str):
            fields[name] = _clean_text(fields[name])
    return fields


def _update_returning(
    session: Session, prediction_id: str, condition: Any, values: dict[str, Any]
) -> Prediction | None:
    """One ``UPDATE ... WHERE id AND condition RETURNING *``: the compare-and-set and the
    read of the prediction as it now stands, in one statement."""
    statement = (
        update(PredictionRow)
        .where(PredictionRow.id == prediction_id, condition)
        .values(**_clean(values))
        .returning(PredictionRow)
        .execution_options(populate_existing=True, synchronize_session=False)
    )
    row = session.scalars(statement).one_or_none()
    session.commit()
    return _record(row) if row is not None else None


def move(
    session: Session,
    prediction_id: str,
    new: Status,
    *,
    expected: Status | None = None,
    **fields: Any,
) -> Prediction | None:
    """Apply a status change if the lifecycle allows it from the current status.

    A compare-and-set: of two racing writers (a cancel and a finishing worker) exactly
    one wins, and a terminal status is never overwritten. With ``expected`` the row must
    still be in that status (the caller computed ``fields`` from it). Returns the
    prediction as it now stands, or None when the move did not apply.
    """
    if expected is not None:
        lifecycle.check(expected, new)
        condition = PredictionRow.status == expected.value
    else:
        condition = PredictionRow.status.in_([s.value for s in lifecycle.sources_of(new)])
    return _update_returning(session, prediction_id, condition, {"status": new.value, **fields})


def append_logs(session: Session, prediction_id: str, text: str) -> Prediction | None:
    """Add to the logs of a running prediction. None when it is no longer running
    (canceled by another request or process): the worker's cue to stop."""
    running = PredictionRow.status == Status.PROCESSING.value
    return _update_returning(
        session, prediction_id, running, {"logs": PredictionRow.logs + _clean_text(text)}
    )


def set_output(session: Session, prediction_id: str, output: Any) -> Prediction | None:
    """Replace the output of a running prediction (it grows while it runs)."""
    running = PredictionRow.status == Status.PROCESSING.value
    return _update_returning(session, prediction_id, running, {"output": output})


def unfinished(session: Session) -> list[Prediction]:
    """Predictions a crashed process may have left behind, oldest first."""
    rows = session.scalars(
        select(PredictionRow)
        .where(PredictionRow.status.in_([Status.STARTING.value, Status.PROCESSING.value]))
        .order_by(PredictionRow.created_at)
    )
    return [_record(r) for r in rows]


def count_for_model(session: Session, model: str) -> int:
    query = select(func.count()).select_from(PredictionRow).where(PredictionRow.model == model)
    return session.scalar(query) or 0

"""Prediction rows: insert, read, page, and status changes as compare-and-set.

Reads and writes are Core statements on the table, not ORM entities: a prediction is read
into a ``Prediction`` record at once, so the identity map, change tracking and
unit-of-work flush would only cost time (about four times the statement itself on the
busiest paths: every status read, every log flush). The hot statements are built once.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, func, or_, select, update
from sqlalchemy import insert as sql_insert

from repligate import lifecycle
from repligate.lifecycle import Status
from repligate.records import Prediction, RunProgress
from repligate.store import webhooks
from repligate.store.db import Db
from repligate.store.rows import ApiKeyRow, PredictionRow

_TABLE = cast(Table, PredictionRow.__table__)
_C = _TABLE.c
_KEYS = cast(Table, ApiKeyRow.__table__)
_GET = select(_TABLE).where(_C.id == bindparam("prediction_id"))
# A prediction read together with the check of the caller's key: one statement.
_GET_FOR_TOKEN = (
    select(_TABLE)
    .select_from(_TABLE.join(_KEYS, _KEYS.c.id == _C.api_key_id))
    .where(
        _C.id == bindparam("prediction_id"),
        _KEYS.c.token_hash == bindparam("token_hash"),
        _KEYS.c.revoked_at.is_(None),
    )
)


def record(row: Any) -> Prediction:
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
        deadline=row.deadline,
        base_url=row.base_url,
        api_prefix=row.api_prefix or "",
        data_removed=bool(row.data_removed),
        progress=RunProgress.from_json(row.progress),
        attempts=row.attempts or 0,
    )


_INSERT = sql_insert(_TABLE)


def insert(session: Db, prediction: Prediction) -> None:
    # The values travel as parameters of a statement built once (building it per call,
    # with its cache key, cost as much as the insert).
    session.execute(
        _INSERT,
        dict(
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
            deadline=prediction.deadline,
            base_url=prediction.base_url,
            api_prefix=prediction.api_prefix,
        ),
    )
    session.commit()


def get(session: Db, prediction_id: str) -> Prediction | None:
    row = session.execute(_GET, {"prediction_id": prediction_id}).one_or_none()
    return record(row) if row is not None else None


def get_for_token(session: Db, prediction_id: str, token_hash: str) -> Prediction | None:
    """The prediction if the active key with this token hash owns it; else None (no
    such prediction, someone else's, or no such active key: the caller tells which)."""
    parameters = {"prediction_id": prediction_id, "token_hash": token_hash}
    row = session.execute(_GET_FOR_TOKEN, parameters).one_or_none()
    return record(row) if row is not None else None


def page(
    session: Db,
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
    query = select(_TABLE).where(PredictionRow.api_key_id == api_key_id)
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
        return [record(r) for r in reversed(list(session.execute(query.limit(limit))))]
    query = query.order_by(PredictionRow.created_at.desc(), PredictionRow.id.desc())
    return [record(r) for r in session.execute(query.limit(limit))]


def _clean_text(text: str) -> str:
    return text.replace("\x00", "\ufffd")


def _clean(fields: dict[str, Any]) -> dict[str, Any]:
    """Text a model or its input put into logs or error may hold NUL, which PostgreSQL's
    text cannot store: it becomes U+FFFD, so no input can break a write."""
    for name in ("logs", "error"):
        if isinstance(fields.get(name), str):
            fields[name] = _clean_text(fields[name])
    if isinstance(fields.get("progress"), RunProgress):
        fields["progress"] = fields["progress"].as_json()
    return fields


@lru_cache(maxsize=256)
def _update_statement(
    statuses: tuple[str, ...],
    names: tuple[str, ...],
    append: bool,
    owned: bool = False,
    lease_expired: bool = False,
) -> Any:
    """``UPDATE ... WHERE id AND status IN statuses RETURNING *`` setting ``names`` (and
    appending to the logs), built once per shape: the values travel as parameters.

    ``owned``: only while the lease is the given owner's (a worker's own writes, so one
    whose lease was taken over writes nothing more). ``lease_expired``: only when the
    lease ran out before a given time (the reaper's moves, leases.py)."""
    values: dict[str, Any] = {name: bindparam(f"set_{name}", type_=_C[name].type) for name in names}
    if append:
        values["logs"] = _C.logs + bindparam("append_logs", type_=_C.logs.type)
    condition = _C.status == statuses[0] if len(statuses) == 1 else _C.status.in_(statuses)
    conditions = [_C.id == bindparam("prediction_id"), condition]
    if owned:
        conditions.append(_C.lease_owner == bindparam("lease_owner_is"))
    if lease_expired:
        conditions.append(_C.lease_expires_at < bindparam("lease_expired_before"))
    return update(_TABLE).where(*conditions).values(values).returning(*_C)


def _update_returning(
    session: Db,
    prediction_id: str,
    statuses: tuple[Status, ...],
    values: dict[str, Any],
    append_logs: str | None = None,
    webhook_event: str | None = None,
    now: datetime | None = None,
    owner: str | None = None,
    lease_expired_before: datetime | None = None,
) -> Prediction | None:
    """One ``UPDATE ... WHERE id AND status IN statuses RETURNING *``: the compare-and-set
    and the read of the prediction as it now stands, in one statement.

    ``webhook_event``: the change's webhook event (``start``, ``output``, ``logs``,
    ``completed``); when the write applies and the prediction's webhook wants it, its
    delivery joins the outbox in the same transaction (``webhooks.enqueue``)."""
    values = _clean(values)
    statement = _update_statement(
        tuple(s.value for s in statuses),
        tuple(sorted(values)),
        append_logs is not None,
        owner is not None,
        lease_expired_before is not None,
    )
    parameters = {f"set_{name}": value for name, value in values.items()}
    parameters["prediction_id"] = prediction_id
    if owner is not None:
        parameters["lease_owner_is"] = owner
    if lease_expired_before is not None:
        parameters["lease_expired_before"] = lease_expired_before
    if append_logs is not None:
        parameters["append_logs"] = _clean_text(append_logs)
    row = session.execute(statement, parameters).one_or_none()
    prediction = record(row) if row is not None else None
    if prediction is not None and webhook_event is not None and prediction.webhook is not None:
        webhooks.enqueue(session, prediction, webhook_event, now or prediction.created_at)
    session.commit()
    return prediction


def move(
    session: Db,
    prediction_id: str,
    new: Status,
    *,
    expected: Status | None = None,
    append_logs: str | None = None,
    webhook_event: str | None = None,
    now: datetime | None = None,
    owner: str | None = None,
    lease_expired_before: datetime | None = None,
    **fields: Any,
) -> Prediction | None:
    """Apply a status change if the lifecycle allows it from the current status.

    A compare-and-set: of two racing writers (a cancel and a finishing worker) exactly
    one wins, and a terminal status is never overwritten. With ``expected`` the row must
    still be in that status (the caller computed ``fields`` from it). ``append_logs`` is
    added to the logs in the same statement; ``webhook_event`` (written at ``now``) joins
    the webhook outbox in the same transaction. Returns the prediction as it now stands,
    or None when the move did not apply.
    """
    if expected is not None:
        lifecycle.check(expected, new)
        statuses: tuple[Status, ...] = (expected,)
    else:
        statuses = tuple(sorted(lifecycle.sources_of(new)))
    values = {"status": new.value, **fields}
    return _update_returning(
        session,
        prediction_id,
        statuses,
        values,
        append_logs=append_logs,
        webhook_event=webhook_event,
        now=now,
        owner=owner,
        lease_expired_before=lease_expired_before,
    )


def append_logs(
    session: Db,
    prediction_id: str,
    text: str,
    *,
    now: datetime | None = None,
    progress: RunProgress | None = None,
    owner: str | None = None,
) -> Prediction | None:
    """Add to the logs of a running prediction (and set its progress, when given). None
    when it is no longer running (canceled by another request or process): the worker's
    cue to stop."""
    return _update_returning(
        session,
        prediction_id,
        (Status.PROCESSING,),
        {} if progress is None else {"progress": progress},
        append_logs=text,
        webhook_event="logs",
        now=now,
        owner=owner,
    )


def set_output(
    session: Db,
    prediction_id: str,
    output: Any,
    *,
    now: datetime | None = None,
    owner: str | None = None,
) -> Prediction | None:
    """Replace the output of a running prediction (it grows while it runs)."""
    return _update_returning(
        session,
        prediction_id,
        (Status.PROCESSING,),
        {"output": output},
        webhook_event="output",
        now=now,
        owner=owner,
    )


def unfinished(session: Db) -> list[Prediction]:
    """Predictions a crashed process may have left behind, oldest first."""
    rows = session.execute(
        select(_TABLE)
        .where(PredictionRow.status.in_([Status.STARTING.value, Status.PROCESSING.value]))
        .order_by(PredictionRow.created_at)
    )
    return [record(r) for r in rows]


def count_for_model(session: Db, model: str) -> int:
    query = select(func.count()).select_from(PredictionRow).where(PredictionRow.model == model)
    return session.scalar(query) or 0


def finished_before(session: Db, cutoff: datetime, *, limit: int) -> list[str]:
    """Ids of terminal predictions completed before ``cutoff`` whose data is still kept,
    oldest first (retention.py)."""
    query = (
        select(_C.id)
        .where(
            _C.completed_at < cutoff,
            _C.data_removed.is_(False),
            _C.status.in_([s.value for s in lifecycle.TERMINAL]),
        )
        .order_by(_C.completed_at)
        .limit(limit)
    )
    return list(session.scalars(query))


def remove_data(session: Db, prediction_id: str) -> Prediction | None:
    """Clear the input, output and logs of a terminal prediction and mark it
    ``data_removed``; returns it as it stood before (its output names the files to
    delete), or None when it is not terminal or was removed already."""
    before = get(session, prediction_id)
    if before is None or not before.status.is_terminal or before.data_removed:
        return None
    result = session.execute(
        update(_TABLE)
        .where(_C.id == prediction_id, _C.data_removed.is_(False))
        .values(input={}, output=None, logs="", data_removed=True)
    )
    session.commit()
    return before if result.rowcount else None  # type: ignore[attr-defined]

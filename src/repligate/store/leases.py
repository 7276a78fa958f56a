"""Worker leases on prediction rows: the claim that starts a run, its renewal, and the
predictions whose lease ran out (their worker died). Compare-and-set statements, so two
workers never both hold one prediction."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import cast

from sqlalchemy import Table, bindparam, select, update

from repligate.lifecycle import Status
from repligate.records import Prediction
from repligate.store import webhooks
from repligate.store.db import Db
from repligate.store.predictions import record
from repligate.store.rows import PredictionRow

_TABLE = cast(Table, PredictionRow.__table__)
_C = _TABLE.c

_CLAIM = (
    update(_TABLE)
    .where(_C.id == bindparam("prediction_id"), _C.status == Status.STARTING.value)
    .values(
        status=Status.PROCESSING.value,
        started_at=bindparam("now"),
        lease_owner=bindparam("owner"),
        lease_expires_at=bindparam("until"),
        attempts=_C.attempts + 1,
    )
    .returning(*_C)
)


def claim(
    session: Db, prediction_id: str, *, owner: str, now: datetime, until: datetime
) -> Prediction | None:
    """``starting`` → ``processing`` under ``owner``'s lease until ``until``, counting one
    more attempt; the ``start`` webhook joins the outbox in the same transaction. None
    when it is not ``starting`` (canceled, or claimed by another worker)."""
    row = session.execute(
        _CLAIM, {"prediction_id": prediction_id, "now": now, "owner": owner, "until": until}
    ).one_or_none()
    prediction = record(row) if row is not None else None
    if prediction is not None and prediction.webhook is not None:
        webhooks.enqueue(session, prediction, "start", now)
    session.commit()
    return prediction


def renew(session: Db, owner: str, prediction_ids: Collection[str], until: datetime) -> set[str]:
    """Extend ``owner``'s leases on these running predictions; returns the ids it still
    holds (one missing was canceled, finished, or taken over after its lease ran out)."""
    if not prediction_ids:
        return set()
    rows = session.execute(
        update(_TABLE)
        .where(
            _C.id.in_(list(prediction_ids)),
            _C.lease_owner == owner,
            _C.status == Status.PROCESSING.value,
        )
        .values(lease_expires_at=until)
        .returning(_C.id)
    )
    held = set(rows.scalars())
    session.commit()
    return held


def expired(session: Db, now: datetime, *, limit: int = 100) -> list[Prediction]:
    """Running predictions whose worker's lease ran out before ``now``, oldest first.
    Those without a lease (relayed ones, and rows from before leases) are not here."""
    rows = session.execute(
        select(_TABLE)
        .where(
            _C.status == Status.PROCESSING.value,
            _C.lease_owner.is_not(None),
            _C.lease_expires_at < now,
        )
        .order_by(_C.created_at)
        .limit(limit)
    )
    return [record(row) for row in rows]

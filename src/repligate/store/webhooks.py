"""The webhook outbox: deliveries written with the change they tell of, their attempts,
and each key's signing secret.

``enqueue`` adds no commit of its own: the prediction store calls it inside the
compare-and-set write of a change (``predictions._update_returning``), so the change and
its delivery are committed together or not at all.
"""

from __future__ import annotations

import base64
import dataclasses
import secrets
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from repligate.lifecycle import Status
from repligate.records import Prediction, RunProgress, WebhookAttempt, WebhookDelivery
from repligate.store.db import Db
from repligate.store.rows import WebhookAttemptRow, WebhookDeliveryRow, WebhookSecretRow

# Replicate's events; a prediction without a filter gets all of them.
EVENTS = ("start", "output", "logs", "completed")
PENDING, DELIVERED, FAILED, SUPERSEDED = "pending", "delivered", "failed", "superseded"

_DELIVERIES = cast(Table, WebhookDeliveryRow.__table__)
_D = _DELIVERIES.c
_ATTEMPTS = cast(Table, WebhookAttemptRow.__table__)
_SECRETS = cast(Table, WebhookSecretRow.__table__)


def wants(prediction: Prediction, event: str) -> bool:
    """Whether the prediction's webhook asked for this event."""
    if prediction.webhook is None:
        return False
    wanted = prediction.webhook_events_filter
    return event in (EVENTS if wanted is None else wanted)


def delivery_id(prediction_id: str, event: str) -> str:
    # The completed delivery's id is fixed: a second one for the same prediction cannot be
    # written (primary key), whichever process tries.
    if event == "completed":
        return f"msg_{prediction_id}_completed"
    return f"msg_{prediction_id}_{secrets.token_hex(6)}"


def snapshot(prediction: Prediction) -> dict[str, Any]:
    """The fields of a prediction that change while it runs, as JSON."""
    return {
        "status": prediction.status.value,
        "output": prediction.output,
        "logs": prediction.logs,
        "error": prediction.error,
        "started_at": _iso(prediction.started_at),
        "completed_at": _iso(prediction.completed_at),
        "predict_time": prediction.predict_time,
        "total_time": prediction.total_time,
        "progress": prediction.progress.as_json() if prediction.progress else None,
    }


def as_of(prediction: Prediction, fields: dict[str, Any] | None) -> Prediction:
    """``prediction`` as it stood when ``fields`` (a ``snapshot``) were taken."""
    if fields is None:
        return prediction
    return dataclasses.replace(
        prediction,
        status=Status(fields["status"]),
        output=fields["output"],
        logs=fields["logs"],
        error=fields["error"],
        started_at=_datetime(fields["started_at"]),
        completed_at=_datetime(fields["completed_at"]),
        predict_time=fields["predict_time"],
        total_time=fields["total_time"],
        progress=RunProgress.from_json(fields.get("progress")),
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _datetime(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def enqueue(session: Db, prediction: Prediction, event: str, now: datetime) -> bool:
    """Add the delivery of ``event`` if the prediction's webhook wants it (no commit)."""
    if not wants(prediction, event):
        return False
    assert prediction.webhook is not None
    session.execute(
        insert(_DELIVERIES),
        dict(
            id=delivery_id(prediction.id, event),
            # Writes of one prediction are serialised (transitions.py): one after the
            # prediction's last delivery.
            seq=session.scalar(
                select(func.coalesce(func.max(_D.seq), 0) + 1).where(
                    _D.prediction_id == prediction.id
                )
            ),
            prediction_id=prediction.id,
            event=event,
            url=prediction.webhook,
            state=PENDING,
            attempts=0,
            created_at=now,
            next_attempt_at=now,
            snapshot=snapshot(prediction),
        ),
    )
    return True


def _delivery(row: Any) -> WebhookDelivery:
    return WebhookDelivery(
        id=row.id,
        seq=row.seq,
        prediction_id=row.prediction_id,
        event=row.event,
        url=row.url,
        state=row.state,
        attempts=row.attempts,
        created_at=row.created_at,
        next_attempt_at=row.next_attempt_at,
        last_attempt_at=row.last_attempt_at,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        snapshot=row.snapshot,
    )


def due_predictions(session: Db, now: datetime, limit: int = 100) -> list[str]:
    """Predictions with a delivery due now, the longest waiting first."""
    rows = session.execute(
        select(_D.prediction_id, _D.next_attempt_at)
        .where(_D.state == PENDING, _D.next_attempt_at <= now)
        .order_by(_D.next_attempt_at)
        .limit(limit * 4)
    )
    found: list[str] = []
    for row in rows:
        if row.prediction_id not in found:
            found.append(row.prediction_id)
    return found[:limit]


def pending(session: Db, prediction_id: str) -> list[WebhookDelivery]:
    """A prediction's deliveries still to make, in the order of its changes."""
    rows = session.execute(
        select(_DELIVERIES)
        .where(_D.prediction_id == prediction_id, _D.state == PENDING)
        .order_by(_D.seq)
    )
    return [_delivery(r) for r in rows]


def claim(session: Db, delivery: WebhookDelivery, until: datetime) -> bool:
    """Take a due delivery for sending until ``until`` (a lease: if this process dies, it
    is due again then). Of two processes, one wins."""
    result = session.execute(
        update(_DELIVERIES)
        .where(
            _D.id == delivery.id,
            _D.state == PENDING,
            _D.next_attempt_at == delivery.next_attempt_at,
        )
        .values(next_attempt_at=until)
    )
    session.commit()
    return cast(int, result.rowcount) == 1  # type: ignore[attr-defined]


def set_state(
    session: Db,
    delivery_id_: str,
    *,
    state: str,
    next_attempt_at: datetime | None = None,
) -> None:
    final = {} if state == PENDING else {"snapshot": None}
    session.execute(
        update(_DELIVERIES)
        .where(_D.id == delivery_id_, _D.state == PENDING)
        .values(state=state, next_attempt_at=next_attempt_at, **final)
    )
    session.commit()


def record_attempt(
    session: Db,
    delivery: WebhookDelivery,
    attempt: WebhookAttempt,
    *,
    state: str,
    next_attempt_at: datetime | None,
) -> None:
    """Log one try and what comes next (``state`` pending with a retry time, or final)."""
    session.execute(
        insert(_ATTEMPTS),
        dict(
            delivery_id=delivery.id,
            attempted_at=attempt.attempted_at,
            url=attempt.url,
            status_code=attempt.status_code,
            error=attempt.error,
            seconds=attempt.seconds,
        ),
    )
    session.execute(
        update(_DELIVERIES)
        .where(_D.id == delivery.id)
        .values(
            state=state,
            attempts=_D.attempts + 1,
            next_attempt_at=next_attempt_at,
            last_attempt_at=attempt.attempted_at,
            last_status_code=attempt.status_code,
            last_error=attempt.error,
            **({} if state == PENDING else {"snapshot": None}),
        )
    )
    session.commit()


def last_sent(session: Db, prediction_id: str, events: tuple[str, ...]) -> datetime | None:
    """When one of these events of the prediction was last tried (for the throttle)."""
    return cast(
        datetime | None,
        session.scalar(
            select(_D.last_attempt_at)
            .where(_D.prediction_id == prediction_id, _D.event.in_(events))
            .where(_D.last_attempt_at.is_not(None))
            .order_by(_D.last_attempt_at.desc())
            .limit(1)
        ),
    )


def delivery_log(
    session: Db, prediction_id: str
) -> list[tuple[WebhookDelivery, list[WebhookAttempt]]]:
    deliveries = [
        _delivery(r)
        for r in session.execute(
            select(_DELIVERIES).where(_D.prediction_id == prediction_id).order_by(_D.seq)
        )
    ]
    result = []
    for delivery in deliveries:
        attempts = [
            WebhookAttempt(
                attempted_at=r.attempted_at,
                url=r.url,
                status_code=r.status_code,
                error=r.error,
                seconds=r.seconds,
            )
            for r in session.execute(
                select(_ATTEMPTS)
                .where(_ATTEMPTS.c.delivery_id == delivery.id)
                .order_by(_ATTEMPTS.c.id)
            )
        ]
        result.append((delivery, attempts))
    return result


def new_secret() -> str:
    """Standard Webhooks' form: whsec_ and base64 of 24 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def secret(session: Db, api_key_id: str, now: datetime) -> str:
    """The key's signing secret, made on first use (of two racing makers, one wins)."""
    query = select(_SECRETS.c.secret).where(_SECRETS.c.api_key_id == api_key_id)
    found = session.scalar(query)
    if found is not None:
        return cast(str, found)
    try:
        session.execute(
            insert(_SECRETS), dict(api_key_id=api_key_id, secret=new_secret(), created_at=now)
        )
        session.commit()
    except IntegrityError:
        session.rollback()
    return cast(str, session.scalar(query))

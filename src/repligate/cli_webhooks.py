"""``repligate webhooks PREDICTION_ID``: a prediction's webhook delivery log, read from
the database: each event, its state, every attempt with its status code or error, and
when the next retry is due."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from repligate.records import WebhookAttempt
from repligate.settings import Settings


def webhooks(
    prediction_id: Annotated[str, typer.Argument(help="The prediction's id")],
) -> None:
    """Show a prediction's webhook deliveries: attempts, status codes, next retry."""
    from repligate.cli import _sessions
    from repligate.store import predictions
    from repligate.store import webhooks as outbox

    with _sessions(Settings())() as session:
        prediction = predictions.get(session, prediction_id)
        log = outbox.delivery_log(session, prediction_id) if prediction else []
    out = Console(width=200)
    if prediction is None:
        Console(stderr=True).print(f"no prediction with id {prediction_id!r}")
        raise typer.Exit(1)
    if prediction.webhook is None:
        out.print(f"prediction {prediction_id} has no webhook")
        return
    wanted = ", ".join(prediction.webhook_events_filter or outbox.EVENTS)
    out.print(f"webhook {prediction.webhook} (events: {wanted})", highlight=False)
    table = Table("webhook-id", "event", "state", "attempts", "attempt", "answer", "next retry")
    for delivery, attempts in log:
        rows: list[WebhookAttempt | None] = [*attempts] or [None]
        for number, attempt in enumerate(rows, 1):
            first = number == 1
            answer = ""
            when = ""
            if attempt is not None:
                when = f"{number}: {attempt.attempted_at.isoformat(timespec='seconds')}"
                code = attempt.status_code
                answer = str(code) if code is not None else attempt.error or ""
            retry = ""
            if first and delivery.state == outbox.PENDING and delivery.next_attempt_at:
                retry = delivery.next_attempt_at.isoformat(timespec="seconds")
            table.add_row(
                delivery.id if first else "",
                delivery.event if first else "",
                delivery.state if first else "",
                str(delivery.attempts) if first else "",
                when,
                answer,
                retry,
            )
    out.print(table)

"""``repligate usage`` (the priced usage report) and ``repligate sweep`` (retention, once)."""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)

_RELATIVE = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def register(app: typer.Typer) -> None:
    app.command("usage")(usage)
    app.command("sweep")(sweep)


def parse_when(text: str, now: datetime) -> datetime:
    """``30d``, ``12h``, ``90m``, ``2w`` ago, or an ISO 8601 date or time (UTC if no zone)."""
    relative = _RELATIVE.match(text.strip())
    if relative:
        return now - timedelta(seconds=int(relative.group(1)) * _UNITS[relative.group(2)])
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise typer.BadParameter(
            f"{text!r}: give a date (2026-11-01), a time (2026-11-01T12:00:00Z) or an age "
            "(30d, 12h, 90m, 2w)"
        ) from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def usage(
    since: Annotated[str, typer.Option(help="From: a date, a time, or an age like 30d")] = "30d",
    until: Annotated[str | None, typer.Option(help="Until (excluded); default now")] = None,
    by: Annotated[str, typer.Option(help="One row per key or per model")] = "key",
    key: Annotated[str | None, typer.Option(help="Only this key (id or name)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout, not a table")] = False,
) -> None:
    """Usage of the predictions that finished in a period, priced by the operator's unit
    prices (REPLIGATE_USAGE_PRICES or REPLIGATE_USAGE_PRICES_FILE)."""
    from repligate.cli import _sessions
    from repligate.pricing import PriceList, report
    from repligate.settings import Settings
    from repligate.store import usage as store

    if by not in ("key", "model"):
        raise typer.BadParameter("--by takes key or model")
    settings = Settings()
    try:
        prices = PriceList.from_settings(settings)
    except ValueError as exc:
        console.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    now = datetime.now(UTC)
    start = parse_when(since, now)
    end = parse_when(until, now) if until else now
    with _sessions(settings)() as session:
        totals = store.totals(session, since=start, until=end, key=key)
    rows = report(totals, prices, "key" if by == "key" else "model")
    currency = settings.usage_currency
    if as_json:
        print(
            json.dumps(
                {
                    "since": start.isoformat(),
                    "until": end.isoformat(),
                    "currency": currency,
                    "rows": [
                        {
                            by: row.name,
                            "predictions": row.predictions,
                            "ran": row.ran,
                            "predict_seconds": round(row.predict_seconds, 3),
                            "images": row.images,
                            "megapixel_steps": round(row.pixel_steps / 1e6, 3),
                            "frames": row.frames,
                            "video_seconds": round(row.video_seconds, 3),
                            "output_bytes": row.output_bytes,
                            "cost": str(row.cost),
                            "unpriced_models": sorted(row.unpriced),
                        }
                        for row in rows
                    ],
                }
            )
        )
        return
    table = Table(
        by,
        "predictions",
        "predict s",
        "images",
        "MP·steps",
        "frames",
        "video s",
        "bytes",
        f"cost ({currency})",
        title=f"usage {start:%Y-%m-%d %H:%M} – {end:%Y-%m-%d %H:%M} UTC",
    )
    for row in rows:
        cost = f"{row.cost:.4f}" + (" *" if row.unpriced else "")
        table.add_row(
            row.name,
            str(row.predictions),
            f"{row.predict_seconds:.1f}",
            str(row.images),
            f"{row.pixel_steps / 1e6:.2f}",
            str(row.frames),
            f"{row.video_seconds:.1f}",
            str(row.output_bytes),
            cost,
        )
    # Piped into a file, the table keeps its full width (rich would squeeze it to 80).
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    unpriced = sorted(set().union(*(row.unpriced for row in rows))) if rows else []
    if unpriced:
        console.print(
            f"* no price set for: {', '.join(unpriced)} (counted as 0)",
            soft_wrap=True,
            highlight=False,
        )


def sweep() -> None:
    """Run retention once: record missing usage, remove data of predictions past
    prediction_retention_seconds, remove expired and deleted uploaded files."""
    from repligate.app import build_container
    from repligate.settings import Settings
    from repligate.store import migrate

    container = build_container(Settings())
    migrate.upgrade(container.engine)
    assert container.sweeper is not None
    result = container.sweeper.run_once()
    console.print(
        f"usage recorded: {result.usage_recorded}; predictions cleared: "
        f"{result.predictions_cleared}; files removed: {result.files_removed}; "
        f"file rows deleted: {result.file_rows_deleted}"
    )
    container.engine.dispose()

"""``repligate keys limits NAME``: show or set a key's rate limits, quota and cap."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from repligate.records import KeyLimits
    from repligate.settings import Settings

console = Console(stderr=True)

_RATE_HELP = 'like 600/minute (several joined by ";"), "none" for no limit, "default"'


def register(keys_app: typer.Typer) -> None:
    keys_app.command("limits")(keys_limits)


def keys_limits(
    key: Annotated[str, typer.Argument(help="Key id or name")],
    create: Annotated[
        str | None, typer.Option("--create", help=f"Creates per window: {_RATE_HELP}")
    ] = None,
    read: Annotated[
        str | None, typer.Option("--read", help=f"Other requests per window: {_RATE_HELP}")
    ] = None,
    quota: Annotated[
        str | None,
        typer.Option(
            "--quota",
            help="Predictions allowed: a count, ever (1000) or per hour|day|week|month|year "
            '(1000/month); "none" for no quota',
        ),
    ] = None,
    concurrency: Annotated[
        str | None,
        typer.Option("--concurrency", help='Predictions queued or running at once; "none"'),
    ] = None,
) -> None:
    """Show a key's limits, or set them (only the options given change).

    The server reads a key's limits again within key_limits_cache_seconds (5 s)."""
    from datetime import UTC, datetime

    from repligate.cli import _sessions
    from repligate.ratelimit import parse_quota, parse_rate
    from repligate.settings import Settings
    from repligate.store import limits as store

    settings = Settings()
    with _sessions(settings)() as session:
        found = store.keys_named(session, key)
        if not found:
            console.print(f"no active key with id or name {key!r}")
            raise typer.Exit(1)
        if len(found) > 1:
            ids = ", ".join(key_id for key_id, _ in found)
            console.print(f"several active keys are named {key!r} ({ids}); give an id")
            raise typer.Exit(1)
        key_id, name = found[0]
        limits = store.for_key(session, key_id)
        changes: dict[str, object] = {}
        try:
            for field, value in (("create_rate_limit", create), ("read_rate_limit", read)):
                if value is not None:
                    if value.strip().lower() != "default":
                        parse_rate(value)
                    changes[field] = None if value.strip().lower() == "default" else value.strip()
            if quota is not None:
                count, window = (None, None) if quota.lower() == "none" else parse_quota(quota)
                changes["prediction_quota"], changes["quota_window_seconds"] = count, window
            if concurrency is not None:
                changes["max_concurrent"] = _count(concurrency)
        except ValueError as exc:
            console.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
            raise typer.Exit(2) from exc
        if changes:
            from dataclasses import replace

            limits = replace(limits, **changes)  # type: ignore[arg-type]
            store.save(session, limits, datetime.now(UTC))
    _show(name, key_id, limits, settings)


def _count(text: str) -> int | None:
    if text.strip().lower() == "none":
        return None
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(f"{text!r} is not a count of predictions (1 or more, or none)")
    return int(text)


def _show(name: str, key_id: str, limits: KeyLimits, settings: Settings) -> None:
    from repligate.ratelimit import quota_text

    table = Table("limit", "value", title=f"{name} ({key_id})")
    table.add_row(
        "create rate",
        limits.create_rate_limit or f"{settings.create_rate_limit} (server default)",
    )
    table.add_row(
        "read rate", limits.read_rate_limit or f"{settings.read_rate_limit} (server default)"
    )
    table.add_row("prediction quota", quota_text(limits) or "none")
    table.add_row("concurrent predictions", str(limits.max_concurrent or "no cap"))
    Console().print(table)

"""``repligate upstream status``: the relay's upstream keys as the server last saw them.

Keys are shown by position and fingerprint (a short hash), never by token."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from repligate.settings import Settings

upstream_app = typer.Typer(help="The relay to Replicate.", no_args_is_help=True)


@upstream_app.command("status")
def status() -> None:
    """Each upstream key (REPLIGATE_UPSTREAM_TOKENS): in the pool or taken out, and why."""
    from repligate.relay.keypool import fingerprint
    from repligate.store import db, migrate
    from repligate.store import relay as relay_store

    settings = Settings()
    tokens = settings.upstream_token_list()
    engine = db.make_engine(settings.resolved_database_url())
    migrate.upgrade(engine)
    with db.connect(db.make_sessions(engine)) as session:
        states = relay_store.key_states(session)
        in_flight = relay_store.count_in_flight(session)
    engine.dispose()
    console = Console()
    console.print(f"upstream: {settings.upstream_url}")
    if not tokens:
        console.print("no upstream keys: set REPLIGATE_UPSTREAM_TOKENS (comma-separated)")
        raise typer.Exit(1)
    table = Table("key", "fingerprint", "state", "since", "reason")
    for position, token in enumerate(tokens, start=1):
        mark = fingerprint(token)
        state = states.get(mark)
        table.add_row(
            str(position),
            mark,
            state.state if state else "active (not used yet)",
            state.changed_at.isoformat(timespec="seconds") if state else "",
            state.reason or "" if state else "",
        )
    console.print(table)
    console.print(f"relayed predictions in flight: {in_flight}")

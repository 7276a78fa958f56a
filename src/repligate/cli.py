"""The ``repligate`` command: serve, worker, keys, models, migrate.

Every command that touches the database migrates it first, so a fresh data directory
just works."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from repligate import cli_limits, cli_usage, cli_webhooks
from repligate.cli_upstream import upstream_app
from repligate.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from repligate.providers.local import LocalProvider

app = typer.Typer(
    help="A self-hosted, Replicate-compatible predictions server.", no_args_is_help=True
)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(upstream_app, name="upstream")
console = Console(stderr=True)


def _sessions(
    settings: Settings, *, migrate_in_child: bool = False, refuse_pending: bool = False
) -> sessionmaker[Session]:
    from repligate.store import db, migrate

    engine = db.make_engine(settings.resolved_database_url(), settings.pool_options())
    if refuse_pending:
        migrate.refuse_if_pending(engine)
    elif migrate_in_child:  # a long-running server never holds alembic (store/migrate.py)
        migrate.upgrade_in_child(engine)
    else:
        migrate.upgrade(engine)
    return db.make_sessions(engine)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on")] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="API processes sharing the port. Each runs its own in-process prediction "
            "workers (so N processes run up to N predictions at once, each loading its "
            "models); use PostgreSQL with more than one.",
        ),
    ] = 1,
) -> None:
    """Start the API server with in-process workers."""

    from repligate.app import create_app
    from repligate.store import keys

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings()
    except ValueError as exc:  # pydantic's ValidationError: a setting that cannot work
        console.print(f"[bold red]refusing to start:[/bold red] {exc}")
        raise typer.Exit(code=2) from None
    if host is not None:
        settings.host = host
    if port is not None:
        settings.port = port
    from repligate.store.migrate import PendingMigrations

    try:
        sessions = _sessions(
            settings, migrate_in_child=True, refuse_pending=not settings.migrate_on_start
        )
    except PendingMigrations as exc:
        console.print(f"[bold red]refusing to start:[/bold red] {exc}")
        raise typer.Exit(code=1) from None
    with sessions() as session:
        if keys.count_active(session) == 0:
            _, token = keys.create(session, name="default")
            console.print("[bold]No API key existed; created one (shown once):[/bold]")
            print(token, flush=True)
    _warn_about_random_weights(settings)
    url = settings.public_base_url or f"http://{settings.host}:{settings.port}"
    console.print(f"repligate listening on [bold]{url}[/bold]  (data in {settings.data_dir})")
    console.print(f"  try: curl {url}/health")
    from repligate.serving import Server, run_workers, uvicorn_config

    if workers > 1:
        # The processes read their settings from the environment, as this one did.
        os.environ["REPLIGATE_HOST"] = settings.host
        os.environ["REPLIGATE_PORT"] = str(settings.port)
        run_workers(
            host=settings.host, port=settings.port, workers=workers, access_log=settings.access_log
        )
        return
    application = create_app(settings)
    config = uvicorn_config(
        application, host=settings.host, port=settings.port, access_log=settings.access_log
    )
    Server(config, on_exit=application.state.container.service.stop_waiting).run()


def _warn_about_random_weights(settings: Settings) -> None:
    from repligate.runners.weights import RANDOM_WEIGHTS_MARKER

    if settings.weights_dir is None:
        return
    random = sorted(p.parent.name for p in settings.weights_dir.glob(f"*/{RANDOM_WEIGHTS_MARKER}"))
    if random:
        console.print(
            "[bold yellow]DEMO: these models run tiny RANDOM weights, so their outputs are "
            f"noise:[/bold yellow] {', '.join(random)}"
        )


@app.command()
def worker(
    models: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated owner/name of the models this worker runs (default: all); "
            "a GPU host can take only some"
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, help="Predictions run at once (default: concurrency per device)"),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve this worker's Prometheus metrics on this port (/metrics)"),
    ] = None,
) -> None:
    """Run predictions from the Celery broker (REPLIGATE_QUEUE=celery) on this host."""
    from repligate.store.migrate import PendingMigrations
    from repligate.worker import Worker

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings()
        # Migrated by `repligate migrate` or an API process; a worker only checks.
        _sessions(settings, refuse_pending=True)
        names = [name.strip() for name in (models or "").split(",") if name.strip()]
        running = Worker(
            settings, names, concurrency or settings.concurrency_per_device, metrics_port
        )
    except (PendingMigrations, ValueError) as exc:
        console.print(f"[bold red]refusing to start:[/bold red] {exc}")
        raise typer.Exit(code=2) from None
    _warn_about_random_weights(settings)
    console.print(f"repligate worker: {', '.join(running.models)}")
    running.run()


@app.command()
def migrate() -> None:
    """Bring the database to the newest schema."""
    _sessions(Settings())
    console.print("database is up to date")


@app.command()
def models() -> None:
    """List the models this server knows."""
    from repligate.models import all_models
    from repligate.relay.routes import RoutePlan

    routes = RoutePlan(Settings(), _local_provider())
    table = Table("model", "version", "runner", "route")
    for spec in all_models():
        table.add_row(
            spec.ref, spec.version, "local" if spec.runner else "none yet", routes.route(spec)
        )
    Console().print(table)


def _local_provider() -> LocalProvider:
    from repligate.providers.local import LocalProvider

    def no_env() -> None:
        raise RuntimeError("the CLI runs no model")

    return LocalProvider(no_env)


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="owner/name or owner/name:version")],
    inputs: Annotated[
        list[str] | None,
        typer.Option("--input", "-i", help="key=value (JSON or text); key=@file for files"),
    ] = None,
    url: Annotated[
        str, typer.Option(envvar="REPLIGATE_URL", help="The server's base URL")
    ] = "http://127.0.0.1:8000",
    token: Annotated[
        str | None, typer.Option(envvar="REPLIGATE_TOKEN", help="An API key of that server")
    ] = None,
    output_dir: Annotated[
        Path, typer.Option("--output-dir", "-o", help="Files go to OUTPUT_DIR/<prediction id>/")
    ] = Path("."),
) -> None:
    """Run a prediction on a running server, follow its logs, save its output files.

    Files go to OUTPUT_DIR/<prediction id>/, never over an existing file; their paths are
    printed on stdout, one a line."""
    import httpx

    from repligate import remote
    from repligate.api.wire import output_urls

    if not token:
        console.print("an API key is needed: --token or REPLIGATE_TOKEN")
        raise typer.Exit(2)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            prediction = remote.run(
                client,
                model,
                remote.parse_input(inputs or []),
                on_logs=lambda text: console.print(text, end="", markup=False, highlight=False),
            )
            urls = output_urls(prediction["output"])
            saved = remote.download(client, prediction["id"], urls, output_dir)
    except (remote.RemoteError, httpx.HTTPError) as exc:
        console.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    if not urls:
        print(json.dumps(prediction["output"]))
    for path in saved:
        print(path)


app.command("webhooks")(cli_webhooks.webhooks)


@keys_app.command("create")
def keys_create(name: Annotated[str, typer.Option(help="A name to recognise the key by")]) -> None:
    """Create a key. The token is printed once, alone on the last line of stdout."""
    from repligate.store import keys

    with _sessions(Settings())() as session:
        key, token = keys.create(session, name=name)
    console.print(f"created key {key.id} ({key.name}); store the token now, it is not kept:")
    print(token)


@keys_app.command("list")
def keys_list() -> None:
    """List keys (never their tokens)."""
    from repligate.store import keys

    with _sessions(Settings())() as session:
        rows = keys.list_all(session)
    table = Table("id", "name", "token starts", "created", "revoked")
    for key in rows:
        table.add_row(
            key.id,
            key.name,
            key.token_prefix + "…",
            key.created_at.isoformat(timespec="seconds"),
            key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else "",
        )
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="Key id or name")]) -> None:
    """Revoke a key by id or name; its token stops working at once."""
    from repligate.store import keys

    with _sessions(Settings())() as session:
        count = keys.revoke(session, key_id_or_name=key)
    if count == 0:
        console.print(f"no active key with id or name {key!r}")
        raise typer.Exit(1)
    console.print(f"revoked {count} key(s)")


# Commands in their own modules.
cli_limits.register(keys_app)
cli_usage.register(app)


if __name__ == "__main__":
    app()

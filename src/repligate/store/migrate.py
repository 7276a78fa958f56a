"""Alembic, run from code: ``upgrade(engine)`` brings any database to the newest schema.

Alembic (with Mako and every SQL dialect's DDL) costs a server about 10 MB that it never
gives back, for a step that is almost always a no-op. So whether a migration is pending
is decided without it: the revisions the scripts declare, read as text, against the
``alembic_version`` table. Alembic is imported only when one is pending, and ``serve``
runs that upgrade in a short child process (``upgrade_in_child``), so a long-running
server never holds it.
"""

from __future__ import annotations

import ast
import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect, text

if TYPE_CHECKING:
    from alembic.config import Config

_HERE = Path(__file__).parent
_VERSIONS = _HERE / "migrations" / "versions"
_URL_ENV = "REPLIGATE_MIGRATE_URL"


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_HERE / "migrations"))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    config.attributes["engine"] = engine
    return config


def _declared(tree: ast.Module, name: str) -> set[str]:
    """The revision ids a module-level ``name = ...`` assignment declares."""
    for node in tree.body:
        if isinstance(node, ast.Assign):
            target, assigned = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, assigned = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id == name:
            value = ast.literal_eval(assigned)
            if value is None:
                return set()
            return {value} if isinstance(value, str) else set(value)
    return set()


def script_heads() -> set[str]:
    """The newest revisions, as the scripts in ``migrations/versions`` declare them."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in _VERSIONS.glob("*.py"):
        if path.name.startswith("__"):
            continue
        tree = ast.parse(path.read_text())
        revisions |= _declared(tree, "revision")
        parents |= _declared(tree, "down_revision")
    return revisions - parents


def database_revisions(engine: Engine) -> set[str]:
    """The revisions the database is at (none for a fresh one)."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return set()
        rows = connection.execute(text("SELECT version_num FROM alembic_version"))
        return {row[0] for row in rows}


def pending(engine: Engine) -> bool:
    """Whether the database is not at the scripts' newest revision."""
    return database_revisions(engine) != script_heads()


# Any fixed 64-bit number; every repligate process takes the same one.
_ADVISORY_LOCK_KEY = 0x7265706C69676174  # "repligat"


class PendingMigrations(RuntimeError):
    """The database is behind the code and this process may not migrate it."""


@contextmanager
def migration_lock(engine: Engine) -> Iterator[None]:
    """Held by one process at a time around an upgrade, so processes started together
    never race to create the same tables: a PostgreSQL advisory lock (released with its
    connection, even if the process dies), or an ``flock`` on a file beside a SQLite
    database. The others wait, then find nothing pending."""
    backend = engine.url.get_backend_name()
    database = engine.url.database
    if backend == "postgresql":
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
            try:
                yield
            finally:
                connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": _ADVISORY_LOCK_KEY}
                )
                connection.commit()
        return
    if backend == "sqlite" and database and database != ":memory:":
        with open(f"{database}.migrate-lock", "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return
    yield  # an in-memory database is private to this process


def upgrade(engine: Engine) -> None:
    if not pending(engine):
        return
    with migration_lock(engine):
        if not pending(engine):  # another process migrated while this one waited
            return
        from alembic import command

        command.upgrade(alembic_config(engine), "head")


def refuse_if_pending(engine: Engine) -> None:
    """For a process told not to migrate (``REPLIGATE_MIGRATE_ON_START=false``)."""
    if pending(engine):
        at = ", ".join(sorted(database_revisions(engine))) or "empty"
        head = ", ".join(sorted(script_heads()))
        raise PendingMigrations(
            f"the database schema is behind this version of repligate (database at {at}, "
            f"code at {head}) and REPLIGATE_MIGRATE_ON_START is false: "
            "run `repligate migrate` first"
        )


def upgrade_in_child(engine: Engine) -> None:
    """``upgrade``, with alembic loaded in a child process that exits after it. An
    in-memory SQLite database is only visible here, so it is upgraded in this process."""
    if not pending(engine):
        return
    database = engine.url.database
    if engine.url.get_backend_name() == "sqlite" and (not database or database == ":memory:"):
        upgrade(engine)
        return
    url = engine.url.render_as_string(hide_password=False)
    # The URL goes by environment, not argv: it may carry a password.
    subprocess.run(
        [sys.executable, "-m", "repligate.store.migrate"],
        env={**os.environ, _URL_ENV: url},
        check=True,
    )


def _main() -> None:
    from repligate.store import db

    engine = db.make_engine(os.environ[_URL_ENV])
    try:
        upgrade(engine)
    finally:
        engine.dispose()


if __name__ == "__main__":
    _main()

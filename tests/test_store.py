"""The store's schema and queries, on SQLite and (when a server is reachable) PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from repligate.bus import EventKind, InProcessBus, PredictionEvent
from repligate.clock import SystemClock
from repligate.lifecycle import Status
from repligate.store import db, migrate
from repligate.store import keys as key_store
from repligate.store import predictions as store
from repligate.transitions import Transitions
from tests.test_lifecycle import new_prediction

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def temporary_postgres_url() -> Iterator[str]:
    try:
        admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            name = f"repligate_test_{uuid.uuid4().hex[:8]}"
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # no server, no driver, no permission: say so and skip
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc}")
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    if request.param == "sqlite":
        urls: Iterator[str] = iter([f"sqlite:///{tmp_path / 'store.db'}"])
    else:
        urls = temporary_postgres_url()
    url = next(urls)
    engine = db.make_engine(url)
    migrate.upgrade(engine)
    migrate.upgrade(engine)  # a second upgrade is a no-op
    yield db.make_sessions(engine)
    engine.dispose()
    for _ in urls:  # runs the PostgreSQL clean-up
        pass


def test_migration_creates_the_tables(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        names = set(inspect(session.get_bind()).get_table_names())
    assert {"api_keys", "predictions", "alembic_version"} <= names


def test_keys_are_stored_hashed(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        key, token = key_store.create(session, name="alice")
        assert key_store.find_active(session, token) == key
        rows = session.execute(text("SELECT * FROM api_keys")).mappings().all()
        assert all(token not in str(value) for row in rows for value in row.values())
        assert key_store.revoke(session, key_id_or_name="alice") == 1
        assert key_store.find_active(session, token) is None


def test_paging_and_moves(sessions: sessionmaker[Session]) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    with sessions() as session:
        key, _ = key_store.create(session, name="k")
        for i in range(5):
            p = new_prediction(key.id, f"p{i}")
            store.insert(session, p.__class__(**{**p.__dict__, "created_at": base + timedelta(i)}))
        newest = store.page(session, api_key_id=key.id, limit=2)
        assert [p.id for p in newest] == ["p4", "p3"]
        older = store.page(
            session, api_key_id=key.id, limit=2, before=(newest[-1].created_at, "p3")
        )
        assert [p.id for p in older] == ["p2", "p1"]
        back = store.page(session, api_key_id=key.id, limit=2, after=(older[0].created_at, "p2"))
        assert [p.id for p in back] == ["p4", "p3"]
        window = store.page(
            session,
            api_key_id=key.id,
            limit=10,
            created_after=base + timedelta(1),
            created_before=base + timedelta(3),
        )
        assert [p.id for p in window] == ["p2", "p1"]
        assert window[0].created_at == base + timedelta(2)

        assert store.move(session, "p0", Status.PROCESSING)
        assert store.append_logs(session, "p0", "a\n") and store.append_logs(session, "p0", "b\n")
        assert store.move(session, "p0", Status.SUCCEEDED, output=["storage:x.png"])
        assert not store.move(session, "p0", Status.CANCELED)
        assert not store.append_logs(session, "p0", "late\n")
        done = store.get(session, "p0")
        assert done is not None
        assert (done.status, done.logs, done.output) == (
            Status.SUCCEEDED,
            "a\nb\n",
            ["storage:x.png"],
        )
        assert [p.id for p in store.unfinished(session)] == ["p1", "p2", "p3", "p4"]
        assert store.count_for_model(session, "stability-ai/stable-diffusion") == 5


def test_a_nul_character_in_logs_or_error_is_written(sessions: sessionmaker[Session]) -> None:
    """PostgreSQL text cannot hold NUL; the store writes U+FFFD in its place."""
    with sessions() as session:
        key, _ = key_store.create(session, name="k")
        store.insert(session, new_prediction(key.id, "n0"))
        assert store.move(session, "n0", Status.PROCESSING)
        assert store.append_logs(session, "n0", "prompt: a\x00fox\n")
        done = store.move(session, "n0", Status.FAILED, error="bad \x00 token")
        assert done is not None
    assert done.logs == "prompt: a\ufffdfox\n"
    assert done.error == "bad \ufffd token"


def test_a_final_write_that_fails_still_ends_the_prediction(
    sessions: sessionmaker[Session],
) -> None:
    """An output the database cannot take: a minimal failed write ends the prediction,
    and the completed event is still published once."""
    events: list[PredictionEvent] = []
    bus = InProcessBus()
    bus.subscribe(events.append)
    transitions = Transitions(sessions, bus, SystemClock())
    with sessions() as session:
        key, _ = key_store.create(session, name="k")
        store.insert(session, new_prediction(key.id, "w0"))
    assert transitions.start("w0") is not None
    ended = transitions.finish("w0", Status.SUCCEEDED, output=[object()])
    assert ended is not None and ended.status is Status.FAILED
    assert ended.error is not None and "could not be recorded" in ended.error
    assert ended.completed_at is not None
    assert [e.kind for e in events] == [EventKind.STARTED, EventKind.COMPLETED]

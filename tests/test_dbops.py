"""Several processes on one database: migrations run once under a lock, a prediction is
claimed once, ``serve --workers N`` and ``/ready``."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

import repligate
from repligate.app import create_app
from repligate.bus import InProcessBus
from repligate.clock import SystemClock
from repligate.settings import Settings
from repligate.store import db, migrate
from repligate.store import keys as key_store
from repligate.store import predictions as store
from repligate.transitions import Transitions
from tests.test_lifecycle import new_prediction, with_webhook
from tests.test_store import POSTGRES_ADMIN_URL, temporary_postgres_url

SOURCE = str(Path(repligate.__file__).parents[1])


def _env(data_dir: Path, database_url: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLIGATE_")}
    env.update(PYTHONPATH=SOURCE, REPLIGATE_DATA_DIR=str(data_dir), **extra)
    if database_url:
        env["REPLIGATE_DATABASE_URL"] = database_url
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from repligate.cli import app; app()", *args]


def _url(database_url: str | None, data_dir: Path) -> str:
    return database_url or f"sqlite:///{(data_dir / 'repligate.db').resolve()}"


def test_two_migrate_processes_at_once_both_succeed(
    database_url: str | None, tmp_path: Path
) -> None:
    env = _env(tmp_path / "data", database_url)
    runs = [
        subprocess.Popen(
            _cli("migrate"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [(run.wait(timeout=120), run.stderr.read() if run.stderr else "") for run in runs]
    for code, stderr in results:
        assert code == 0, stderr
        assert "database is up to date" in stderr
        assert "Traceback" not in stderr
    engine = db.make_engine(_url(database_url, tmp_path / "data"))
    try:
        assert migrate.database_revisions(engine) == migrate.script_heads() == {"0008_lease"}
        with engine.connect() as connection:
            indexes = {i["name"] for i in inspect(connection).get_indexes("predictions")}
        assert {"ix_predictions_key_created", "ix_predictions_key_status"} <= indexes
    finally:
        engine.dispose()


def test_a_server_told_not_to_migrate_refuses_a_behind_database(
    settings: Settings, tmp_path: Path
) -> None:
    settings.migrate_on_start = False
    refused = pytest.raises(migrate.PendingMigrations, match="run `repligate migrate` first")
    with refused, TestClient(create_app(settings)):
        pass
    # The CLI says so, exits 1, and leaves the database untouched.
    data_dir = tmp_path / "cli-data"
    env = _env(data_dir, None, REPLIGATE_MIGRATE_ON_START="false")
    run = subprocess.run(_cli("serve", "--port", "1"), env=env, capture_output=True, text=True)
    said = " ".join(run.stderr.split())  # the console wraps long lines
    assert run.returncode == 1
    assert "refusing to start" in said
    assert "REPLIGATE_MIGRATE_ON_START is false: run `repligate migrate` first" in said
    engine = db.make_engine(_url(None, data_dir))
    assert migrate.database_revisions(engine) == set()
    engine.dispose()
    # Once migrated, the same settings start.
    subprocess.run(_cli("migrate"), env=env, check=True, capture_output=True)
    settings.database_url = _url(None, data_dir)
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").status_code == 200


def test_ready_reports_database_and_storage(client: TestClient) -> None:
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "storage": "ok"}
    assert response.json()["status"] == "ready"
    # The probe object does not stay behind.
    files_dir = client.app.state.container.settings.files_dir  # type: ignore[attr-defined]
    assert not list(Path(files_dir).glob("readiness/*"))


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from temporary_postgres_url()


def test_ready_is_503_when_the_database_is_gone(settings: Settings, postgres_url: str) -> None:
    settings.database_url = postgres_url
    with TestClient(create_app(settings)) as client:
        assert client.get("/ready").status_code == 200
        admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        name = make_url(postgres_url).database
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
        response = client.get("/ready")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "unavailable"
        assert body["checks"]["storage"] == "ok"
        assert body["checks"]["database"] != "ok"
        assert "does not exist" in body["checks"]["database"]
        assert client.get("/health").status_code == 200  # /health never touches the database


def test_two_processes_racing_to_claim_each_prediction_one_wins(postgres_url: str) -> None:
    """Two engines (as two processes have), each with its own Transitions, start the same
    queued predictions at the same moment: every prediction is claimed exactly once."""
    engines = [db.make_engine(postgres_url) for _ in range(2)]
    migrate.upgrade(engines[0])
    sessions = [db.make_sessions(engine) for engine in engines]
    ids = [f"race{i}" for i in range(40)]
    with sessions[0]() as session:
        key, _ = key_store.create(session, name="k")
        for prediction_id in ids:
            store.insert(session, with_webhook(new_prediction(key.id, prediction_id)))
    claims: list[list[str]] = [[], []]
    barrier = threading.Barrier(2)

    def claimer(index: int) -> None:
        transitions = Transitions(sessions[index], InProcessBus(), SystemClock())
        for prediction_id in ids:
            barrier.wait()
            if transitions.start(prediction_id) is not None:
                claims[index].append(prediction_id)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert sorted(claims[0] + claims[1]) == sorted(ids)  # each once, none twice
        with engines[0].connect() as connection:
            started = connection.execute(
                text("SELECT count(*) FROM webhook_deliveries WHERE event = 'start'")
            ).scalar()
            statuses = connection.execute(text("SELECT DISTINCT status FROM predictions"))
            assert {row[0] for row in statuses} == {"processing"}
        assert started == len(ids)  # one "start" webhook per prediction, never two
    finally:
        for engine in engines:
            engine.dispose()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _ready(port: int) -> dict[str, object] | None:
    import json

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=10) as response:
            body: dict[str, object] = json.loads(response.read())
            return body
    except OSError:
        return None


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads parents from /proc")
def test_serve_with_two_workers_answers_from_two_processes_on_one_port(tmp_path: Path) -> None:
    port = _free_port()
    env = _env(tmp_path / "data", None)
    server = subprocess.Popen(
        _cli("serve", "--workers", "2", "--port", str(port)),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        pids: set[int] = set()
        for _ in range(600):  # a start on a busy machine: up to a minute or so
            body = _ready(port)
            if body is not None:
                assert body["status"] == "ready"
                pids.add(int(str(body["pid"])))
                if len(pids) == 2:
                    break
            else:
                assert server.poll() is None, "serve exited"
                threading.Event().wait(0.1)
        assert len(pids) == 2
        assert server.pid not in pids
        assert {_parent_of(pid) for pid in pids} == {server.pid}
    finally:
        server.terminate()
        server.wait(timeout=60)

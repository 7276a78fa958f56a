"""Events across processes (``REPLIGATE_EVENT_BUS_URL``): two app containers share one
database and one Redis bus, as two API processes (or an API process and a worker) do.
A prediction run by A wakes a ``Prefer: wait`` on B and feeds a stream on B; a cancel
through B stops the run on A; metrics and usage count each prediction once, where it ran.
Against the real Redis on 127.0.0.1:6379 (skipped, saying why, when none answers)."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from repligate.bus import EventKind, InProcessBus, PredictionEvent, local_only
from repligate.bus_redis import decode, encode
from repligate.events import Log, Output
from repligate.lifecycle import Status
from repligate.records import Prediction, RunProgress
from repligate.settings import Settings
from repligate.store import usage as usage_store
from repligate.testing.fakes import Gate, ScriptedProvider, WaitForCancel
from repligate.testing.live_server import LiveServer
from tests.fake_app import SD, FakeApp, fake_app
from tests.services import redis_or_skip
from tests.test_streams import parse

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def redis_url() -> str:
    return redis_or_skip(REDIS_URL, "the Redis event bus")


@pytest.fixture
def shared(tmp_path: Path, redis_url: str) -> Settings:
    """One data dir (one SQLite file) and one bus channel of its own for both apps."""
    return Settings(
        data_dir=tmp_path / "data",
        log_flush_interval=0.0,
        webhook_workers=0,
        event_bus_url=redis_url,
        event_bus_channel=f"repligate-test:{uuid.uuid4().hex}",
    )


@contextmanager
def two_apps(settings: Settings, provider: ScriptedProvider) -> Iterator[tuple[FakeApp, FakeApp]]:
    # A runs predictions (its provider plays the script); B only answers requests.
    with fake_app(settings, provider) as a, fake_app(settings, ScriptedProvider()) as b:
        yield a, b


def _hand_to_a(a: FakeApp, b: FakeApp, prediction_id: str) -> threading.Thread:
    """What a broker does: the job B queued runs on A (in a worker thread)."""
    b.queue.pending.remove(prediction_id)
    a.queue.pending.append(prediction_id)
    worker = threading.Thread(target=a.queue.run_next)
    worker.start()
    return worker


def _remote_kinds(app: FakeApp, prediction_id: str) -> list[str]:
    return [e.kind.value for e in app.events if e.prediction.id == prediction_id and not e.local]


def _local_kinds(app: FakeApp, prediction_id: str) -> list[str]:
    return [e.kind.value for e in app.events if e.prediction.id == prediction_id and e.local]


def _predictions_counted(app: FakeApp) -> float:
    response = app.client.get("/metrics")
    assert response.status_code == 200, response.text
    return sum(
        s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
        if s.name == "repligate_predictions_total" and s.labels.get("status") == "succeeded"
    )


def test_a_wait_on_b_wakes_when_a_finishes_and_each_counts_once(shared: Settings) -> None:
    gate = Gate()
    with two_apps(shared, ScriptedProvider(script=[Log("one"), gate], returns="done")) as (a, b):
        answers: list[Any] = []
        waiting = threading.Thread(target=lambda: answers.append(b.create(Prefer="wait=30")))
        waiting.start()
        while not b.queue.pending:  # B created it; the request now waits
            waiting.join(0.01)
        prediction_id = b.queue.pending[0]
        worker = _hand_to_a(a, b, prediction_id)
        assert gate.reached.wait(30)
        gate.open()
        worker.join()
        waiting.join()
        # B does not poll the row with a bus configured: only A's completed event, through
        # Redis, can have ended this wait before its 30 seconds.
        response = answers[0]
        assert response.status_code == 201, response.text
        body = response.json()
        assert (body["id"], body["status"], body["output"]) == (prediction_id, "succeeded", "done")
        assert body["logs"] == "one\n"
        # A delivered its own events once, locally (never a second time through Redis);
        # B heard them as remote ones.
        assert _local_kinds(a, prediction_id) == ["start", "logs", "completed"]
        assert _remote_kinds(a, prediction_id) == []
        assert _remote_kinds(b, prediction_id) == ["start", "logs", "completed"]
        # Counted where it ran, once.
        assert _predictions_counted(a) == 1
        assert _predictions_counted(b) == 0
    with a.container.sessions() as session:
        usage = usage_store.get(session, prediction_id)
    assert usage is not None and usage.prediction_id == prediction_id


def test_a_stream_on_b_gets_the_events_of_a_run_on_a(shared: Settings) -> None:
    gate = Gate()
    provider = ScriptedProvider(script=[Log("one"), Output("a"), gate, Output("b")])
    with fake_app(shared, provider) as a:
        created = a.create()
        assert created.status_code == 201, created.text
        with LiveServer(_app_of(shared)) as b_server:
            import httpx

            worker = threading.Thread(target=a.queue.run_next)
            seen = []
            with httpx.Client(base_url=b_server.url, timeout=60) as client:
                url = created.json()["urls"]["stream"]  # signed: works on any process
                path = url[url.index("/v1/") :]
                with client.stream("GET", path) as response:
                    assert response.status_code == 200
                    worker.start()
                    for event, _, data in parse(response.iter_lines()):
                        seen.append((event, data))
                        if (event, data) == ("output", "a"):
                            gate.open()  # the run on A is held at the gate till now
            worker.join()
    assert seen == [("logs", "one\n"), ("output", "a"), ("output", "b"), ("done", "{}")]


def _app_of(settings: Settings) -> Any:
    """A third process's app on the same database and bus (a real HTTP server)."""
    from repligate.app import build_container, create_app
    from repligate.testing.fakes import ManualQueue

    container = build_container(settings, provider=ScriptedProvider(), queue=ManualQueue.factory())
    return create_app(settings, container)


def test_a_cancel_through_b_stops_the_run_on_a(shared: Settings) -> None:
    with two_apps(shared, ScriptedProvider(script=[WaitForCancel(timeout=60)])) as (a, b):
        created = a.create()
        prediction_id = created.json()["id"]
        started = threading.Event()
        a.container.bus.subscribe(lambda e: started.set() if e.kind is EventKind.STARTED else None)
        worker = threading.Thread(target=a.queue.run_next)
        worker.start()
        assert started.wait(30)
        # The key that created it on A, asking B (one database, one key table).
        canceled = b.client.post(f"/v1/predictions/{prediction_id}/cancel", headers=a.auth)
        assert canceled.status_code == 200, canceled.text
        assert canceled.json()["status"] == "canceled"
        # The run on A stops at its next check (else it would wait its 60 seconds).
        worker.join(30)
        assert not worker.is_alive()
        assert a.get(prediction_id)["status"] == "canceled"
        assert _remote_kinds(a, prediction_id) == ["completed"]  # B's cancel


def test_an_event_crosses_as_json_unchanged() -> None:
    now = datetime(2026, 12, 2, 5, 30, tzinfo=UTC)
    prediction = Prediction.starting(
        id="p1", api_key_id="k", model=SD, version="v", input={"prompt": "é"}, created_at=now
    )
    from dataclasses import replace

    prediction = replace(
        prediction,
        status=Status.PROCESSING,
        started_at=now,
        output=["a", {"b": 1}],
        progress=RunProgress(current=3, total=10, frame=1, frames=4),
    )
    origin, event = decode(encode(PredictionEvent(EventKind.OUTPUT, prediction), "me"))
    assert origin == "me"
    assert event == PredictionEvent(EventKind.OUTPUT, prediction, local=False)


def test_the_in_process_bus_is_unchanged_and_local_only_filters() -> None:
    bus = InProcessBus()
    heard: list[PredictionEvent] = []
    counted: list[PredictionEvent] = []
    bus.subscribe(heard.append)
    bus.subscribe(local_only(counted.append))
    prediction = Prediction.starting(
        id="p1", api_key_id="k", model=SD, version="v", input={}, created_at=datetime.now(UTC)
    )
    mine = PredictionEvent(EventKind.STARTED, prediction)
    theirs = PredictionEvent(EventKind.STARTED, prediction, local=False)
    bus.publish(mine)
    bus.publish(theirs)
    assert mine.local
    assert heard == [mine, theirs]
    assert counted == [mine]


def test_an_unreachable_bus_stops_the_start_saying_where(tmp_path: Path) -> None:
    from repligate.app import build_container

    settings = Settings(data_dir=tmp_path / "data", event_bus_url="redis://127.0.0.1:1/0")
    with pytest.raises(redis.ConnectionError, match=r"127\.0\.0\.1:1\b"):
        build_container(settings)


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def test_ready_reports_the_bus_and_is_503_once_its_redis_is_gone(settings: Settings) -> None:
    """A Redis of the test's own (it is stopped midway), so the shared one stays up."""
    import shutil

    from fastapi.testclient import TestClient

    from repligate.app import create_app
    from tests.processes import Process, free_port

    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server binary to start a Redis of this test's own")
    port = free_port()
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    server = Process("redis", [*argv, "--appendonly", "no"], env, settings.data_dir / "logs")
    try:
        settings.event_bus_url = f"redis://127.0.0.1:{port}/0"
        server.wait_until(lambda: _pings(str(settings.event_bus_url)), "answering PING")
        with TestClient(create_app(settings)) as client:
            ready = client.get("/ready")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"] == {"database": "ok", "storage": "ok", "bus": "ok"}
            server.stop()
            gone = client.get("/ready")
            assert gone.status_code == 503, gone.text
            checks = gone.json()["checks"]
            assert (checks["database"], checks["storage"]) == ("ok", "ok")
            assert checks["bus"].startswith("ConnectionError"), checks
            assert f"127.0.0.1:{port}" in checks["bus"]
            assert client.get("/health").status_code == 200  # /health touches nothing
    finally:
        server.stop()

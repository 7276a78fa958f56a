"""Structured progress through HTTP: the prediction's ``progress`` (step and, for
animations, frame) while it runs and after, in the SSE stream (asked for with
``?progress=1``) and in webhook bodies. The runner reports typed events; the numbers
come through the one transition point, never parsed from log text."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from repligate.events import FrameProgress, Log, Progress
from repligate.records import RunProgress
from repligate.relay.progress import upstream_progress
from repligate.settings import Settings
from repligate.testing.fakes import Gate, ScriptedProvider
from tests.fake_app import ANIMATION, ANIMATION_INPUT, FakeApp, fake_app
from tests.test_streams import parse
from tests.webhook_receiver import webhook_receiver


def _settings(tmp_path: Path, **changes: Any) -> Settings:
    values: dict[str, Any] = dict(
        data_dir=tmp_path / "data",
        log_flush_interval=0.0,
        webhook_workers=0,
        webhook_allowed_networks=["127.0.0.0/8"],
    )
    return Settings(**{**values, **changes})


def _run_in_thread(app: FakeApp) -> threading.Thread:
    worker = threading.Thread(target=app.queue.run_next)
    worker.start()
    return worker


def _stream(app: FakeApp, url: str) -> list[tuple[str, str]]:
    response = app.client.get(url)
    assert response.status_code == 200, response.text
    return [(event, data) for event, _, data in parse(response.text.split("\n"))]


def test_get_shows_the_step_while_it_runs_and_the_last_after(tmp_path: Path) -> None:
    gate = Gate()
    provider = ScriptedProvider(
        script=[Log("Using seed: 1"), Progress(1, 4), Progress(2, 4), gate, Progress(4, 4)],
        returns="done",
    )
    with fake_app(_settings(tmp_path), provider) as app:
        created = app.create().json()
        assert created["progress"] is None  # queued: nothing run yet
        worker = _run_in_thread(app)
        assert gate.reached.wait(30)
        running = app.get(created["id"])
        assert running["status"] == "processing"
        assert running["progress"] == {"current": 2, "total": 4, "percentage": 50.0}
        # The tqdm lines stay in logs beside it (the official client reads them).
        assert " 2/4 " in running["logs"].splitlines()[-1]
        gate.open()
        worker.join(30)
        done = app.get(created["id"])
    assert done["status"] == "succeeded"
    assert done["progress"] == {"current": 4, "total": 4, "percentage": 100.0}
    assert " 4/4 " in done["logs"].splitlines()[-1]
    # Each step reached the bus with the write that recorded it (the one path).
    on_bus = [e.prediction.progress for e in app.events if e.kind.value == "logs"]
    assert [p.current if p else None for p in on_bus] == [None, 1, 2, 4]


def test_an_animation_reports_its_frame_beside_the_step(tmp_path: Path) -> None:
    gate = Gate()
    provider = ScriptedProvider(
        script=[Progress(3, 3), FrameProgress(1, 5), FrameProgress(2, 5), gate],
        returns="video.gif",
    )
    with fake_app(_settings(tmp_path), provider) as app:
        created = app.create(ANIMATION, {"input": ANIMATION_INPUT}).json()
        worker = _run_in_thread(app)
        assert gate.reached.wait(30)
        running = app.get(created["id"])
        gate.open()
        worker.join(30)
    assert running["progress"] == {
        "current": 3,
        "total": 3,
        "percentage": 100.0,
        "frame": {"current": 2, "total": 5},
    }


def test_the_stream_sends_progress_events_only_when_asked(tmp_path: Path) -> None:
    gate = Gate()
    provider = ScriptedProvider(
        script=[Progress(1, 2), gate, Progress(2, 2), FrameProgress(1, 1)], returns="out"
    )
    with fake_app(_settings(tmp_path), provider) as app:
        created = app.create().json()
        url = created["urls"]["stream"]
        worker = _run_in_thread(app)
        assert gate.reached.wait(30)
        gate.open()
        worker.join(30)
        asked = _stream(app, url + "&progress=1")
        plain = _stream(app, url)
    progress = {"current": 2, "total": 2, "percentage": 100.0, "frame": {"current": 1, "total": 1}}
    assert [e for e, _ in asked] == ["logs", "progress", "output", "done"]
    assert json.loads(dict(asked)["progress"]) == progress
    # Without asking, only the events the official client knows.
    assert [e for e, _ in plain] == ["logs", "output", "done"]


def test_webhook_bodies_carry_progress(tmp_path: Path) -> None:
    gate = Gate()
    provider = ScriptedProvider(script=[Progress(1, 3), gate, Progress(3, 3)], returns="x")
    with webhook_receiver() as receiver, fake_app(_settings(tmp_path), provider) as app:
        response = app.create(body={"input": {"prompt": "a fox"}, "webhook": receiver.url})
        assert response.status_code == 201, response.text
        worker = _run_in_thread(app)
        assert gate.reached.wait(30)
        app.container.webhooks.deliver_due()
        gate.open()
        worker.join(30)
        app.clock.advance(5)
        app.container.webhooks.deliver_due()
    bodies = [received.json() for received in receiver.received]
    assert [b["status"] for b in bodies] == ["processing", "processing", "succeeded"]
    assert bodies[0]["progress"] is None  # start: before the first step
    assert bodies[1]["progress"] == {"current": 1, "total": 3, "percentage": 33.3}
    assert bodies[2]["progress"] == {"current": 3, "total": 3, "percentage": 100.0}


def test_a_relayed_prediction_takes_upstreams_progress_or_its_last_tqdm_line() -> None:
    given = {"current": 3, "total": 8, "percentage": 37.5, "frame": {"current": 1, "total": 2}}
    assert upstream_progress({"progress": given, "logs": ""}) == RunProgress(3, 8, 1, 2)
    # Replicate sends only the lines: the last one counts, as the official client reads it.
    logs = "Using seed: 1\n 20%|##        | 1/5 [00:01<00:04]\n 60%|######    | 3/5 [00:02<00:01]\n"
    assert upstream_progress({"logs": logs}) == RunProgress(3, 5)
    assert upstream_progress({"logs": "no bar here"}) is None
    assert upstream_progress({"progress": {"current": "x"}, "logs": None}) is None

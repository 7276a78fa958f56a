"""Cancel-After: Replicate's duration syntax (at least 5 s), the prediction's
``deadline``, and the cancel when it passes, queued or running, after a restart too.
The fake clock moves; the watcher is run by hand (``expire_due``)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from repligate.deadlines import parse_cancel_after
from repligate.errors import InvalidRequest
from repligate.events import Log
from repligate.settings import Settings
from repligate.testing.fakes import Gate, ScriptedProvider
from tests.api_helpers import assert_problem
from tests.fake_app import SD, FakeApp, fake_app


def _create(app: FakeApp, cancel_after: str) -> Any:
    return app.client.post(
        f"/v1/models/{SD}/predictions",
        json={"input": {"prompt": "a fox"}},
        headers={**app.auth, "Cancel-After": cancel_after},
    )


def _settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", log_flush_interval=0.0, webhook_workers=0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5", 5), ("30s", 30), ("1.5m", 90), ("1h30m45s", 5445), ("2h", 7200), ("5000ms", 5)],
)
def test_durations_are_read_as_replicate_writes_them(text: str, seconds: float) -> None:
    assert parse_cancel_after(text) == seconds


@pytest.mark.parametrize("text", ["4", "4s", "4999ms", "", "soon", "5x", "-10s", "1h 30m"])
def test_bad_or_short_durations_are_refused(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_cancel_after(text)


def test_a_bad_header_is_a_422_and_creates_nothing(tmp_path: Path) -> None:
    with fake_app(_settings(tmp_path), ScriptedProvider()) as app:
        problem = assert_problem(_create(app, "3s"), 422)
        assert "at least 5 seconds" in problem["detail"]
        problem = assert_problem(_create(app, "tomorrow"), 422)
        assert "Cancel-After" in problem["detail"]
        assert app.client.get("/v1/predictions", headers=app.auth).json()["results"] == []


def test_the_deadline_cancels_what_runs_too_long(tmp_path: Path) -> None:
    gate = Gate()
    provider = ScriptedProvider(script=[Log("working"), gate], returns="late")
    with fake_app(_settings(tmp_path), provider) as app:
        running = _create(app, "1m").json()
        queued = _create(app, "90s").json()
        plain = app.create().json()
        assert running["deadline"] == "2026-01-01T00:01:00.000000Z"
        assert queued["deadline"] == "2026-01-01T00:01:30.000000Z"
        assert "deadline" not in plain
        worker = threading.Thread(target=app.queue.run_next)
        worker.start()
        assert gate.reached.wait(30)

        app.clock.advance(59)
        app.container.deadlines.expire_due()
        assert app.get(running["id"])["status"] == "processing"
        app.clock.advance(1)
        app.container.deadlines.expire_due()
        ended = app.get(running["id"])
        assert ended["status"] == "canceled"
        assert "Cancel-After" in ended["logs"] and ended["deadline"] == running["deadline"]
        gate.open()  # the worker notices at its next step, and changes nothing
        worker.join(30)
        assert app.get(running["id"])["status"] == "canceled"

        app.clock.advance(30)
        app.container.deadlines.expire_due()
        assert app.get(queued["id"])["status"] == "canceled"  # never started
        app.queue.run_all()
        assert app.get(queued["id"])["status"] == "canceled"
        assert app.get(plain["id"])["status"] == "succeeded"
        assert [model for model, _ in provider.runs].count("stability-ai/stable-diffusion") == 2


def test_a_prediction_that_finishes_in_time_keeps_its_result(tmp_path: Path) -> None:
    with fake_app(_settings(tmp_path), ScriptedProvider(returns="done"), inline=True) as app:
        done = _create(app, "5s").json()
        app.clock.advance(10)
        app.container.deadlines.expire_due()
        shown = app.get(done["id"])
        assert (shown["status"], shown["output"]) == ("succeeded", "done")


def test_deadlines_are_kept_across_a_restart(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with fake_app(settings, ScriptedProvider()) as app:
        queued = _create(app, "10s").json()
        auth = app.auth
    with fake_app(settings, ScriptedProvider()) as again:
        again.clock.advance(11)
        again.container.deadlines.expire_due()
        shown = again.client.get(f"/v1/predictions/{queued['id']}", headers=auth).json()
        assert shown["status"] == "canceled"

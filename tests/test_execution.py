"""The executor through the HTTP API, on the fakes: events, live outputs, what canceled
and failed predictions keep, and no file left that no prediction points to."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from repligate.app import build_container
from repligate.events import Log, Output, OutputFile, Progress
from repligate.settings import Settings
from repligate.storage.local import LocalStorage
from repligate.testing.fakes import Gate, ManualQueue, Raise, ScriptedProvider, WaitForCancel
from tests.fake_app import ANIMATION, ANIMATION_INPUT, FakeApp, fake_app


def frame(n: int) -> OutputFile:
    return OutputFile(name=f"frame-{n}.png", data=f"frame {n}".encode(), content_type="image/png")


def stored_files(settings: Settings) -> list[str]:
    root = settings.files_dir
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def run_in_thread(target: Any) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def running_with_one_frame(app: FakeApp) -> tuple[str, threading.Thread]:
    """An animation running on a worker thread, its first frame out, waiting for more."""
    pid = app.create(ANIMATION, {"input": ANIMATION_INPUT}).json()["id"]
    worker = run_in_thread(app.queue.run_next)
    while not app.get(pid)["output"]:
        worker.join(0.01)
    return pid, worker


def test_events_of_a_prediction_arrive_in_order(settings: Settings) -> None:
    provider = ScriptedProvider([Log("Using seed: 1"), Progress(1, 2), Progress(2, 2)])
    provider.returns = [frame(0)]
    with fake_app(settings, provider, inline=True) as app:
        created = app.create()
        assert created.status_code == 201
        pid = created.json()["id"]
        body = app.get(pid)
        assert body["status"] == "succeeded"
        assert body["output"][0].endswith(f"/files/predictions/{pid}/frame-0.png")
        assert "Using seed: 1" in body["logs"] and "2/2" in body["logs"]
        assert app.kinds(pid) == ["start", "logs", "logs", "logs", "completed"]


def test_iterator_output_grows_while_the_prediction_runs(settings: Settings) -> None:
    gate = Gate()
    provider = ScriptedProvider()
    provider.scripts[ANIMATION] = ([Output(frame(0)), gate, Output(frame(1))], None)
    with fake_app(settings, provider) as app:
        pid = app.create(ANIMATION, {"input": ANIMATION_INPUT}).json()["id"]
        worker = run_in_thread(app.queue.run_next)
        assert gate.reached.wait(30)
        running = app.get(pid)
        assert running["status"] == "processing"
        assert len(running["output"]) == 1
        # The first frame is stored and served while the prediction still runs.
        first = app.client.get(running["output"][0])
        assert first.status_code == 200 and first.content == b"frame 0"
        gate.open()
        worker.join(30)
        done = app.get(pid)
        assert done["status"] == "succeeded"
        assert [url.rsplit("/", 1)[1] for url in done["output"]] == ["frame-0.png", "frame-1.png"]
        assert app.kinds(pid) == ["start", "output", "output", "completed"]


def test_canceled_prediction_keeps_the_outputs_it_had(settings: Settings) -> None:
    provider = ScriptedProvider()
    provider.scripts[ANIMATION] = ([Output(frame(0)), WaitForCancel()], None)
    with fake_app(settings, provider) as app:
        pid, worker = running_with_one_frame(app)
        canceled = app.client.post(f"/v1/predictions/{pid}/cancel", headers=app.auth)
        assert canceled.json()["status"] == "canceled"
        worker.join(30)
        body = app.get(pid)
        assert body["status"] == "canceled" and len(body["output"]) == 1
        assert app.client.get(body["output"][0]).content == b"frame 0"
        assert stored_files(settings) == [f"predictions/{pid}/frame-0.png"]
        assert app.kinds(pid) == ["start", "output", "completed"]


def test_failed_prediction_keeps_its_outputs_and_says_why(settings: Settings) -> None:
    provider = ScriptedProvider()
    provider.scripts[ANIMATION] = ([Output(frame(0)), Raise("out of memory")], None)
    with fake_app(settings, provider, inline=True) as app:
        pid = app.create(ANIMATION, {"input": ANIMATION_INPUT}).json()["id"]
        body = app.get(pid)
        assert body["status"] == "failed"
        assert body["error"] == "out of memory"
        assert len(body["output"]) == 1
        assert body["completed_at"] is not None


class CancelOnWrite(LocalStorage):
    """Storage that lets a cancel land right after a file is written: the moment that
    used to leave orphan files."""

    on_put: Callable[[], object] | None = None

    def put(self, key: str, data: bytes, content_type: str) -> str:
        reference = super().put(key, data, content_type)
        if self.on_put is not None:
            self.on_put()
        return reference


def test_a_cancel_after_the_files_are_written_leaves_no_orphan_file(settings: Settings) -> None:
    provider = ScriptedProvider(returns=[frame(0), frame(1)])
    storage = CancelOnWrite(settings.files_dir)
    with fake_app(settings, provider, storage=storage) as app:
        pid = app.create().json()["id"]
        storage.on_put = lambda: app.cancel(pid)
        app.queue.run_next()
        body = app.get(pid)
        assert body["status"] == "canceled"
        assert body["output"] is None
        assert stored_files(settings) == []


def test_a_live_output_after_a_cancel_elsewhere_is_not_kept(settings: Settings) -> None:
    """Another process canceled it: this worker learns at its next write, which does
    not apply, and the file it just stored is removed."""
    gate = Gate()
    provider = ScriptedProvider()
    provider.scripts[ANIMATION] = ([gate, Output(frame(0)), WaitForCancel()], None)
    with fake_app(settings, provider) as app:
        pid = app.create(ANIMATION, {"input": ANIMATION_INPUT}).json()["id"]
        worker = run_in_thread(app.queue.run_next)
        assert gate.reached.wait(30)
        # A second server on the same database (its own queue and cancel flags).
        other = build_container(settings, provider=provider, queue=ManualQueue.factory())
        owner = other.service.authenticate(app.auth["Authorization"].split()[1])
        assert other.service.cancel(owner, pid).status.value == "canceled"
        other.engine.dispose()
        gate.open()
        worker.join(30)
        body = app.get(pid)
        assert body["status"] == "canceled" and body["output"] is None
        assert stored_files(settings) == []
        assert app.kinds(pid) == ["start"]  # the completed event was the other server's


def test_metrics_follow_the_clock(settings: Settings) -> None:
    gate = Gate()
    provider = ScriptedProvider([gate])
    with fake_app(settings, provider) as app:
        pid = app.create().json()["id"]
        app.clock.advance(2)  # queued for 2 s
        worker = run_in_thread(app.queue.run_next)
        assert gate.reached.wait(30)
        app.clock.advance(5)  # ran for 5 s
        gate.open()
        worker.join(30)
        body = app.get(pid)
        assert body["status"] == "succeeded"
        assert body["metrics"]["predict_time"] == 5.0
        assert body["metrics"]["total_time"] == 7.0


def test_an_output_that_is_not_json_fails_the_prediction_saying_so(settings: Settings) -> None:
    provider = ScriptedProvider(returns=[float("nan")])
    with fake_app(settings, provider, inline=True) as app:
        pid = app.create().json()["id"]
        body = app.get(pid)
        assert body["status"] == "failed"
        assert "not valid JSON" in body["error"]


def test_a_handed_back_prediction_drops_its_outputs_and_runs_again(settings: Settings) -> None:
    """A stopping worker hands its prediction back: it is queued again with no output,
    and the files it had are removed (the next run makes its own)."""
    provider = ScriptedProvider()
    provider.scripts[ANIMATION] = ([Output(frame(0)), WaitForCancel()], None)
    with fake_app(settings, provider) as app:
        pid, worker = running_with_one_frame(app)
        app.queue.hand_back(pid)
        worker.join(30)
        body = app.get(pid)
        assert body["status"] == "starting" and body["output"] is None
        assert body["started_at"] is None and "queued again" in body["logs"]
        assert stored_files(settings) == []
        provider.scripts[ANIMATION] = ([Output(frame(0)), Output(frame(1))], None)
        app.queue.submit(pid)
        app.queue.run_all()
        done = app.get(pid)
        assert done["status"] == "succeeded" and len(done["output"]) == 2
        assert app.kinds(pid).count("completed") == 1

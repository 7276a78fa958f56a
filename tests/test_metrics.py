"""GET /metrics through HTTP: Prometheus' text format with predictions by model and status,
time histograms, queue depth, what runs by provider, fetch refusals and webhook tries;
the three REPLIGATE_METRICS modes; and prometheus_client's multiprocess mode."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from repligate.events import Progress
from repligate.metrics import refusal_reason
from repligate.settings import Settings
from repligate.testing.fakes import Gate, Raise, ScriptedProvider
from tests.api_helpers import assert_problem
from tests.fake_app import SD, FakeApp, fake_app
from tests.webhook_receiver import webhook_receiver

REMBG = "cjwbw/rembg"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _settings(tmp_path: Path, **changes: Any) -> Settings:
    values: dict[str, Any] = dict(
        data_dir=tmp_path / "data",
        log_flush_interval=0.0,
        webhook_workers=0,
        webhook_allowed_networks=["127.0.0.0/8"],
    )
    return Settings(**{**values, **changes})


def _scrape(app: FakeApp, headers: dict[str, str] | None = None) -> Samples:
    response = app.client.get("/metrics", headers=headers or {})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return _samples(response.text)


def _samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _create(app: FakeApp, model: str = SD, body: dict[str, Any] | None = None) -> str:
    response = app.create(model, body)
    assert response.status_code == 201, response.text
    prediction_id: str = response.json()["id"]
    return prediction_id


def test_metrics_count_what_happened_to_predictions(tmp_path: Path) -> None:
    gate = Gate()
    provider = ScriptedProvider(
        script=[Progress(1, 1)],
        returns="out",
        scripts={"stability-ai/stable-diffusion-img2img": ([Raise("boom")], None)},
    )
    with webhook_receiver() as receiver, fake_app(_settings(tmp_path), provider) as app:
        _create(app)
        _create(app, body={"input": {"prompt": "b"}, "webhook": receiver.url})
        _create(app, "stability-ai/stable-diffusion-img2img", {"input": {"image": _PNG}})
        # Refused when the worker fetches it: loopback is not reachable by default.
        _create(app, REMBG, {"input": {"image": "http://127.0.0.1:9/x.png"}})
        app.clock.advance(2.0)  # the queue wait of the four above
        app.queue.run_all()
        app.container.webhooks.deliver_due()
        canceled = _create(app)
        app.cancel(canceled)
        app.queue.run_all()  # its worker finds it canceled and does nothing
        # One runs (held at a gate), one waits in the queue.
        provider.script = [gate]
        _create(app)
        _create(app)
        worker = threading.Thread(target=app.queue.run_next)
        worker.start()
        assert gate.reached.wait(30)
        try:
            samples = _scrape(app)
        finally:
            gate.open()
            worker.join(30)
        after = _scrape(app)
    sd, img2img = ("model", SD), ("model", "stability-ai/stable-diffusion-img2img")
    assert samples[("repligate_predictions_total", (sd, ("status", "succeeded")))] == 2
    assert samples[("repligate_predictions_total", (sd, ("status", "canceled")))] == 1
    assert samples[("repligate_predictions_total", (img2img, ("status", "failed")))] == 1
    assert samples[("repligate_predictions_total", (("model", REMBG), ("status", "failed")))] == 1
    # Histograms: cumulative buckets by model; the two succeeded waited 2 s in the queue.
    assert samples[("repligate_queue_wait_seconds_count", (sd,))] == 3  # + the running one
    assert samples[("repligate_queue_wait_seconds_bucket", (("le", "1.0"), sd))] == 1
    assert samples[("repligate_queue_wait_seconds_bucket", (("le", "2.5"), sd))] == 3
    assert samples[("repligate_total_time_seconds_count", (sd,))] == 3
    assert samples[("repligate_predict_time_seconds_count", (sd,))] == 2
    assert samples[("repligate_queue_depth", ())] == 1
    assert samples[("repligate_predictions_in_flight", (("provider", "local"),))] == 1
    assert samples[("repligate_predictions_in_flight", (("provider", "replicate"),))] == 0
    assert samples[("repligate_fetch_refusals_total", (("reason", "blocked_address"),))] == 1
    delivered = (("event", "completed"), ("outcome", "delivered"))
    assert samples[("repligate_webhook_deliveries_total", delivered)] == 1
    assert after[("repligate_predictions_total", (sd, ("status", "succeeded")))] == 3
    assert after[("repligate_predictions_in_flight", (("provider", "local"),))] == 0


def test_refusal_reasons_are_a_short_fixed_set() -> None:
    assert refusal_reason("the address 10.0.0.1 is private; set ...") == "blocked_address"
    assert refusal_reason("redirected to http://x/: the address ::1 is loopback") == (
        "blocked_address"
    )
    assert refusal_reason("the file is larger than 1000 bytes") == "too_large"
    assert refusal_reason("downloading took longer than 0.3 seconds") == "timeout"
    assert refusal_reason("the server answered 404 for http://x/") == "http_status"
    assert refusal_reason("something new") == "other"


@pytest.mark.parametrize(
    ("mode", "headers", "status"),
    [
        ("off", {}, 404),
        ("token:s3cret-metrics", {}, 401),
        ("token:s3cret-metrics", {"Authorization": "Bearer wrong"}, 401),
        ("token:s3cret-metrics", {"Authorization": "Bearer s3cret-metrics"}, 200),
        ("open", {}, 200),
    ],
)
def test_repligate_metrics_guards_the_endpoint(
    tmp_path: Path, mode: str, headers: dict[str, str], status: int
) -> None:
    with fake_app(_settings(tmp_path, metrics=mode), ScriptedProvider()) as app:
        response = app.client.get("/metrics", headers=headers)
        if status == 200:
            assert "repligate_queue_depth 0.0" in response.text
        else:
            assert_problem(response, status)


def test_a_bad_metrics_mode_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="REPLIGATE_METRICS"):
        Settings(metrics="tok:x")


# One process of a scaled-out server: its own Metrics, one prediction finished, a scrape.
_RUN_ONE = textwrap.dedent(
    """
    import dataclasses, sys
    from datetime import UTC, datetime
    from repligate.bus import EventKind, PredictionEvent
    from repligate.lifecycle import Status
    from repligate.metrics import Metrics
    from repligate.records import Prediction
    from repligate.store import db, migrate

    engine = db.make_engine("sqlite:///" + sys.argv[1])
    migrate.upgrade(engine)
    metrics = Metrics(db.make_sessions(engine))
    now = datetime.now(UTC)
    queued = Prediction.starting(
        id=sys.argv[2], api_key_id="k", model="stability-ai/stable-diffusion",
        version="v", input={}, created_at=now,
    )
    done = dataclasses.replace(queued, status=Status.SUCCEEDED, predict_time=1.0, total_time=2.0)
    metrics.on_event(PredictionEvent(EventKind.COMPLETED, done))
    print(metrics.render()[0].decode())
    """
)


def test_multiprocess_mode_adds_up_every_process(tmp_path: Path) -> None:
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared), "PYTHONPATH": "src"}
    root = Path(__file__).resolve().parent.parent
    outputs = [
        subprocess.run(
            [sys.executable, "-c", _RUN_ONE, str(tmp_path / "db.sqlite"), f"p{n}"],
            env=env,
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout
        for n in range(2)
    ]
    succeeded = ("repligate_predictions_total", (("model", SD), ("status", "succeeded")))
    assert _samples(outputs[0])[succeeded] == 1
    # The second process's scrape counts the first process's prediction too.
    assert _samples(outputs[1])[succeeded] == 2
    assert _samples(outputs[1])[("repligate_total_time_seconds_count", (("model", SD),))] == 2
    assert _samples(outputs[1])[("repligate_queue_depth", ())] == 0


_PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4"
    "//8/AAX+Av4N70a4AAAAAElFTkSuQmCC"
)

"""``REPLIGATE_QUEUE=celery``: the API (this process) queues predictions on a real broker,
``repligate worker`` processes run them, on PostgreSQL, with the Redis event bus.

Killing a worker with SIGKILL mid-run, SIGTERM with a short grace period, a cancel made
in the API, workers that take only some models, RabbitMQ as the broker, and a broker
that is down."""

from __future__ import annotations

import io
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from repligate.app import create_app
from repligate.leases import LOST_ERROR
from repligate.records import Prediction
from repligate.settings import Settings
from repligate.store import predictions as store
from tests.celery_workers import (
    RABBIT_BROKER,
    REDIS_BROKER,
    Stack,
    WorkerProcess,
    settings_of,
    stack_env,
)
from tests.celery_workers import postgres_url as postgres_url
from tests.conftest import make_token
from tests.s3_server import free_port
from tests.services import require_service

SD = "stability-ai/stable-diffusion"
REMBG = "cjwbw/rembg"
QUICK = {"prompt": "a fox", "width": 64, "height": 64, "num_inference_steps": 2}
# Long enough to be caught mid-run on any machine: every step writes a log line.
SLOW = {"prompt": "a fox", "width": 64, "height": 64, "num_inference_steps": 150}


class Deployment:
    def __init__(self, client: TestClient, stack: Stack) -> None:
        self.client = client
        self.stack = stack
        self.auth = {"Authorization": f"Bearer {make_token(client)}"}

    def create(self, model: str, body: dict[str, Any]) -> str:
        response = self.client.post(
            f"/v1/models/{model}/predictions", json={"input": body}, headers=self.auth
        )
        assert response.status_code == 201, response.text
        prediction_id: str = response.json()["id"]
        return prediction_id

    def get(self, prediction_id: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/predictions/{prediction_id}", headers=self.auth)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def row(self, prediction_id: str) -> Prediction:
        sessions = self.client.app.state.container.sessions  # type: ignore[attr-defined]
        with sessions() as session:
            found = store.get(session, prediction_id)
        assert found is not None
        return found

    def lease_owner(self, prediction_id: str) -> str | None:
        from sqlalchemy import select

        from repligate.store.rows import PredictionRow

        sessions = self.client.app.state.container.sessions  # type: ignore[attr-defined]
        with sessions() as session:
            owner: str | None = session.scalar(
                select(PredictionRow.lease_owner).where(PredictionRow.id == prediction_id)
            )
        return owner

    def until(self, prediction_id: str, done: Any, seconds: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        while True:
            body = self.get(prediction_id)
            if done(body):
                return body
            if time.monotonic() > deadline:
                logs = "\n".join(w.log()[-3000:] for w in self.stack.workers)
                raise AssertionError(f"waited too long; prediction: {body}\nworkers:\n{logs}")
            time.sleep(0.1)

    def finished(self, prediction_id: str) -> dict[str, Any]:
        return self.until(
            prediction_id, lambda p: p["status"] in ("succeeded", "failed", "canceled")
        )

    def running_on(self, prediction_id: str, workers: list[WorkerProcess]) -> WorkerProcess:
        """Wait until a worker is mid-run (its steps show in the logs); that worker."""
        self.until(prediction_id, lambda p: p["status"] == "processing" and "3/150" in p["logs"])
        owner = self.lease_owner(prediction_id) or ""
        for worker in workers:
            if f":{worker.pid}:" in owner:
                return worker
        raise AssertionError(f"no worker of {[w.pid for w in workers]} holds {owner}")

    def image(self, url: str) -> Image.Image:
        path = url.split("://", 1)[1].split("/", 1)[1]
        response = self.client.get("/" + path)
        assert response.status_code == 200
        return Image.open(io.BytesIO(response.content))


def _deploy(settings: Settings, database_url: str, broker: str, **env: str) -> Iterator[Deployment]:
    require_service(broker, "the broker")
    require_service("redis://127.0.0.1:6379", "Redis (the event bus)")
    stack = Stack(stack_env(settings, database_url, broker, **env), settings.data_dir)
    try:
        # The API migrates the database at start; then the workers find it ready.
        with TestClient(create_app(settings_of(settings, stack.env))) as client:
            yield Deployment(client, stack)
    finally:
        stack.close()


@pytest.fixture
def deployment(settings: Settings, postgres_url: str) -> Iterator[Deployment]:
    yield from _deploy(settings, postgres_url, REDIS_BROKER)


@pytest.fixture
def one_try(settings: Settings, postgres_url: str) -> Iterator[Deployment]:
    yield from _deploy(settings, postgres_url, REDIS_BROKER, REPLIGATE_MAX_ATTEMPTS="1")


def test_workers_run_only_their_models(deployment: Deployment) -> None:
    metrics_port = free_port()
    sd_worker = deployment.stack.start_worker("--models", SD, "--metrics-port", str(metrics_port))
    rembg_worker = deployment.stack.start_worker("--models", REMBG)
    ready = deployment.client.get("/ready").json()
    assert ready["checks"]["broker"] == "ok" and ready["checks"]["bus"] == "ok", ready
    sd_id = deployment.create(SD, QUICK)
    picture = deployment.get(sd_id)
    done = deployment.finished(sd_id)
    assert done["status"] == "succeeded", done
    assert deployment.image(done["output"][0]).size == (64, 64)
    rembg_id = deployment.create(REMBG, {"image": _data_uri(deployment.image(done["output"][0]))})
    cut_out = deployment.finished(rembg_id)
    assert cut_out["status"] == "succeeded", cut_out
    assert deployment.image(cut_out["output"]).mode == "RGBA"
    # Each ran on the worker given its model, once.
    assert f":{sd_worker.pid}:" in (deployment.lease_owner(sd_id) or "")
    assert f":{rembg_worker.pid}:" in (deployment.lease_owner(rembg_id) or "")
    assert deployment.row(sd_id).attempts == deployment.row(rembg_id).attempts == 1
    # The worker counts what ended there, for Prometheus to scrape.
    scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).text
    assert f'repligate_predictions_total{{model="{SD}",status="succeeded"}} 1.0' in scraped
    assert picture["status"] in ("starting", "processing", "succeeded")


def test_sigkill_mid_run_reruns_it_on_another_worker(deployment: Deployment) -> None:
    workers = [deployment.stack.start_worker("--models", SD) for _ in range(2)]
    prediction_id = deployment.create(SD, SLOW)
    victim = deployment.running_on(prediction_id, workers)
    victim.stop(signal.SIGKILL)
    done = deployment.finished(prediction_id)
    assert done["status"] == "succeeded", done
    assert "lease ran out" in done["logs"]
    assert deployment.image(done["output"][0]).size == (64, 64)
    survivor = next(w for w in workers if w is not victim)
    assert f":{survivor.pid}:" in (deployment.lease_owner(prediction_id) or "")
    assert deployment.row(prediction_id).attempts == 2


def test_sigkill_after_the_last_try_fails_it_clearly(one_try: Deployment) -> None:
    worker = one_try.stack.start_worker("--models", SD)
    prediction_id = one_try.create(SD, SLOW)
    one_try.running_on(prediction_id, [worker]).stop(signal.SIGKILL)
    done = one_try.finished(prediction_id)
    assert done["status"] == "failed"
    assert done["error"] == LOST_ERROR.format(runs=1)
    assert done["completed_at"] is not None


def test_sigterm_hands_the_run_back_after_the_grace_period(deployment: Deployment) -> None:
    leaving = deployment.stack.start_worker("--models", SD, REPLIGATE_SHUTDOWN_GRACE_SECONDS="0")
    prediction_id = deployment.create(SD, SLOW)
    deployment.running_on(prediction_id, [leaving])
    assert leaving.stop(signal.SIGTERM) == 0  # a clean exit, once the run was handed back
    handed_back = deployment.get(prediction_id)
    assert handed_back["status"] == "starting", handed_back
    assert "queued again" in handed_back["logs"]
    deployment.stack.start_worker("--models", SD)
    done = deployment.finished(prediction_id)
    assert done["status"] == "succeeded", done
    assert deployment.row(prediction_id).attempts == 2


def test_a_cancel_in_the_api_stops_the_run_on_the_worker(deployment: Deployment) -> None:
    worker = deployment.stack.start_worker("--models", SD)
    prediction_id = deployment.create(SD, SLOW)
    deployment.running_on(prediction_id, [worker])
    response = deployment.client.post(
        f"/v1/predictions/{prediction_id}/cancel", headers=deployment.auth
    )
    assert response.status_code == 200 and response.json()["status"] == "canceled"
    # The worker stopped that run: the next prediction runs on it at once.
    quick = deployment.create(SD, QUICK)
    assert deployment.finished(quick)["status"] == "succeeded"
    canceled = deployment.get(prediction_id)
    assert canceled["status"] == "canceled"
    assert "150/150" not in canceled["logs"]


def test_rabbitmq_as_the_broker(settings: Settings, postgres_url: str) -> None:
    for deployment in _deploy(settings, postgres_url, RABBIT_BROKER):
        deployment.stack.start_worker("--models", SD)
        prediction_id = deployment.create(SD, QUICK)
        done = deployment.finished(prediction_id)
        assert done["status"] == "succeeded", done


def test_a_broker_that_is_down_answers_503_and_leaves_nothing_queued(
    settings: Settings,
    postgres_url: str,
) -> None:
    env = stack_env(settings, postgres_url, "redis://127.0.0.1:9/0")  # nothing listens on 9
    with TestClient(create_app(settings_of(settings, env))) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        response = client.post(f"/v1/models/{SD}/predictions", json={"input": QUICK}, headers=auth)
        assert response.status_code == 503
        assert response.json()["title"] == "Queue unavailable"
        listed = client.get("/v1/predictions", headers=auth).json()["results"]
        assert [p["status"] for p in listed] == ["failed"]
        assert "broker is unavailable" in listed[0]["error"]
        # The load balancer's probe says which part is down; liveness stays cheap.
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"] == "ok"
        assert ready.json()["checks"]["broker"] != "ok"
        assert client.get("/health").status_code == 200


def _data_uri(image: Image.Image) -> str:
    import base64

    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_the_worker_refuses_to_start_saying_why(
    settings: Settings,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from repligate.cli import app as cli

    monkeypatch.setenv("REPLIGATE_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("REPLIGATE_DATABASE_URL", postgres_url)
    monkeypatch.setenv("REPLIGATE_QUEUE", "celery")
    no_broker = CliRunner().invoke(cli, ["worker"])
    assert no_broker.exit_code == 2
    assert "REPLIGATE_QUEUE=celery needs REPLIGATE_BROKER_URL" in no_broker.output
    monkeypatch.setenv("REPLIGATE_BROKER_URL", REDIS_BROKER)
    # An empty database: the worker does not migrate, it says to.
    behind = CliRunner().invoke(cli, ["worker"])
    assert behind.exit_code == 2 and "migrate" in behind.output
    assert CliRunner().invoke(cli, ["migrate"]).exit_code == 0
    unknown = CliRunner().invoke(cli, ["worker", "--models", f"{SD},someone/else"])
    assert unknown.exit_code == 2
    assert "unknown model(s): someone/else" in unknown.output

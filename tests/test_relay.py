"""The relay with a real upstream: a second repligate server on loopback, running tiny
weights, plays Replicate. The relaying server has no weights and routes every model to
it; users see what they see on a local run (same 422s, same outputs, files served here).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import replicate
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from typer.testing import CliRunner

from repligate.app import create_app
from repligate.cli import app as cli_app
from repligate.settings import Settings
from repligate.testing.live_server import LiveServer
from tests.conftest import FAST_SD_INPUT, SD_REF
from tests.test_api_predictions import SEED_BODY

SD_MODEL = "stability-ai/stable-diffusion"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> Iterator[LiveServer]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("upstream"),
        weights_dir=tiny_weights,
        log_flush_interval=0.0,
    )
    with LiveServer(create_app(settings)) as server:
        yield server


@pytest.fixture(scope="module")
def upstream_token(upstream: LiveServer) -> str:
    return upstream.make_token("relay")


def relay_settings(data_dir: Path, upstream: LiveServer, token: str) -> Settings:
    return Settings(
        data_dir=data_dir,
        route="replicate",
        upstream_url=f"{upstream.url}/v1",
        upstream_tokens=SecretStr(token),
        upstream_poll_min_seconds=0.05,
        upstream_poll_max_seconds=0.25,
    )


@pytest.fixture(scope="module")
def relay(
    tmp_path_factory: pytest.TempPathFactory, upstream: LiveServer, upstream_token: str
) -> Iterator[LiveServer]:
    settings = relay_settings(tmp_path_factory.mktemp("relay"), upstream, upstream_token)
    with LiveServer(create_app(settings)) as server:
        yield server


@pytest.fixture
def relay_token(relay: LiveServer) -> str:
    return relay.make_token()


def upstream_count(upstream: LiveServer) -> int:
    return upstream.container.service.run_count(
        upstream.container.service.registry.resolve(SD_MODEL)
    )


def png_size(url: str) -> tuple[int, int]:
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200
    with Image.open(io.BytesIO(response.content)) as picture:
        assert picture.format == "PNG"
        return picture.size


def test_the_official_client_runs_a_relayed_model(
    relay: LiveServer, relay_token: str, upstream: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPLICATE_POLL_INTERVAL", "0.05")
    client = replicate.Client(api_token=relay_token, base_url=relay.url)
    before = upstream_count(upstream)
    prediction = client.predictions.create(version=SD_REF, input={**FAST_SD_INPUT, "seed": 3})
    prediction.wait()
    assert prediction.status == "succeeded", prediction.error
    output = prediction.output
    assert isinstance(output, list)
    (url,) = output
    assert url.startswith(f"{relay.url}/files/predictions/{prediction.id}/")
    assert png_size(url) == (64, 64)
    assert "Using seed: 3" in (prediction.logs or "")
    assert upstream_count(upstream) == before + 1
    # predict_time is upstream's own: the same number the upstream prediction shows.
    upstream_view = httpx.get(
        f"{upstream.url}/v1/predictions",
        headers={"Authorization": f"Bearer {upstream_token_of(relay)}"},
    ).json()["results"][0]
    assert prediction.metrics is not None
    assert prediction.metrics["predict_time"] == upstream_view["metrics"]["predict_time"]
    # `run` too, through the model route (it reads the version after creating).
    ran = client.run(SD_MODEL, input=FAST_SD_INPUT)
    assert isinstance(ran, list) and png_size(ran[0]) == (64, 64)


def upstream_token_of(relay: LiveServer) -> str:
    return relay.container.settings.upstream_token_list()[0]


def test_the_seed_curl_is_answered_with_our_own_urls(relay: LiveServer, relay_token: str) -> None:
    # The seed's body and route; fewer steps and pixels (the tiny weights take most of a
    # minute for 768 px and 50 steps on a busy machine; test_api_predictions runs those).
    small = {**SEED_BODY["input"], "width": 128, "height": 128, "num_inference_steps": 2}
    response = httpx.post(
        f"{relay.url}/replicate/v1/predictions",
        json={**SEED_BODY, "input": small},
        headers={"Authorization": f"Bearer {relay_token}"},
        timeout=90,
    )
    body = response.json()
    while body["status"] not in ("succeeded", "failed", "canceled"):  # a busy machine
        body = httpx.get(
            body["urls"]["get"], headers={"Authorization": f"Bearer {relay_token}"}
        ).json()
    assert body["status"] == "succeeded", body["error"]
    (item,) = body["data"]
    assert item["url"].startswith(relay.url) and body["output"] == [item["url"]]
    assert png_size(item["url"]) == (128, 128)
    # Upstream's progress comes along; the relay's calls show in its metrics.
    assert body["progress"] == {"current": 2, "total": 2, "percentage": 100.0}
    metrics = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(httpx.get(f"{relay.url}/metrics").text)
        for sample in family.samples
    }
    created = (("method", "POST"), ("status", "201"))
    assert metrics[("repligate_upstream_requests_total", created)] >= 1
    assert metrics[("repligate_predictions_in_flight", (("provider", "replicate"),))] == 0


def test_bad_input_is_refused_here_and_never_reaches_upstream(
    relay: LiveServer, relay_token: str, upstream: LiveServer
) -> None:
    before = upstream_count(upstream)
    response = httpx.post(
        f"{relay.url}/v1/predictions",
        json={"version": SD_REF, "input": {"prompt": "x", "width": 3000}},
        headers={"Authorization": f"Bearer {relay_token}"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["invalid_fields"][0]["field"] == "input.width"
    assert upstream_count(upstream) == before


def test_the_route_shows_in_the_model_and_in_the_cli(
    relay: LiveServer, relay_token: str, tmp_path: Path
) -> None:
    model = httpx.get(
        f"{relay.url}/v1/models/{SD_MODEL}", headers={"Authorization": f"Bearer {relay_token}"}
    ).json()
    assert model["route"] == "replicate"
    env = {"REPLIGATE_DATA_DIR": str(tmp_path), "COLUMNS": "200"}
    listed = CliRunner().invoke(
        cli_app, ["models"], env={**env, "REPLIGATE_ROUTES": '{"cjwbw/rembg": "replicate"}'}
    )
    rows = {line.split()[1]: line for line in listed.output.splitlines() if "/" in line}
    assert "replicate" in rows["cjwbw/rembg"]
    assert "local" in rows[SD_MODEL]  # auto, and no upstream keys: stays local


RELAY_ONLY = """
import json, sys, time
for name in ("torch", "diffusers", "transformers", "onnxruntime"):
    sys.modules[name] = None  # as if the `local` extra were not installed
from pydantic import SecretStr
from fastapi.testclient import TestClient
from repligate.app import create_app
from repligate.settings import Settings
from repligate.store import keys
settings = Settings(data_dir=sys.argv[1], upstream_url=sys.argv[2] + "/v1",
                    upstream_tokens=SecretStr(sys.argv[3]), upstream_poll_min_seconds=0.05,
                    upstream_poll_max_seconds=0.25)
app = create_app(settings)
with TestClient(app) as client:
    with app.state.container.sessions() as session:
        _, token = keys.create(session, name="t")
    auth = {"Authorization": "Bearer " + token}
    body = client.post("/v1/predictions", headers=auth,
                       json={"version": sys.argv[4], "input": json.loads(sys.argv[5])}).json()
    while body["status"] not in ("succeeded", "failed", "canceled"):
        time.sleep(0.05)
        body = client.get("/v1/predictions/" + body["id"], headers=auth).json()
    routes = [client.get("/v1/models/" + m, headers=auth).json()["route"]
              for m in ("stability-ai/stable-diffusion", "cjwbw/rembg")]
print(json.dumps({"status": body["status"], "error": body["error"], "routes": routes,
                  "torch": "torch" in sys.modules and sys.modules["torch"] is not None}))
"""


def test_a_relay_only_install_serves_models_without_importing_torch(
    upstream: LiveServer, upstream_token: str, tmp_path: Path
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            RELAY_ONLY,
            str(tmp_path),
            upstream.url,
            upstream_token,
            SD_REF,
            json.dumps(FAST_SD_INPUT),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {
        "status": "succeeded",
        "error": None,
        "routes": ["replicate", "replicate"],
        "torch": False,
    }


SERVE_RELAYED = """
import json, os, signal, sys, threading, time
import httpx
HEAVY = ("torch", "diffusers", "transformers", "onnxruntime", "av", "alembic")

def heavy():
    return sorted(name for name in HEAVY if sys.modules.get(name) is not None)

def check():
    from repligate.settings import Settings
    from repligate.store import db, keys
    url, found = "http://127.0.0.1:" + sys.argv[1], {}
    for _ in range(1200):
        try:
            if httpx.get(url + "/health").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    found["after_start"] = heavy()
    with db.make_sessions(db.make_engine(Settings().resolved_database_url()))() as session:
        _, token = keys.create(session, name="t")
    auth = {"Authorization": "Bearer " + token}
    body = httpx.post(url + "/v1/predictions", headers=auth, timeout=60,
                      json={"version": sys.argv[2], "input": json.loads(sys.argv[3])}).json()
    while body["status"] not in ("succeeded", "failed", "canceled"):
        time.sleep(0.05)
        body = httpx.get(url + "/v1/predictions/" + body["id"], headers=auth).json()
    found["status"], found["after_prediction"] = body["status"], heavy()
    print(json.dumps(found), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=check, daemon=True).start()
from repligate.cli import app
app(["serve", "--port", sys.argv[1]])
"""


def test_serve_with_every_model_relayed_never_imports_the_ml_stack(
    upstream: LiveServer, upstream_token: str, tmp_path: Path
) -> None:
    """`repligate serve` as `make install` installs it (the ML stack is importable here),
    every model routed to replicate: neither startup (its migration runs in a child
    process) nor a relayed prediction loads torch, diffusers, transformers, onnxruntime,
    av or alembic."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "REPLIGATE_DATA_DIR": str(tmp_path),
        "REPLIGATE_ROUTE": "replicate",
        "REPLIGATE_UPSTREAM_URL": f"{upstream.url}/v1",
        "REPLIGATE_UPSTREAM_TOKENS": upstream_token,
        "REPLIGATE_UPSTREAM_POLL_MIN_SECONDS": "0.05",
        "REPLIGATE_UPSTREAM_POLL_MAX_SECONDS": "0.25",
    }
    done = subprocess.run(
        [sys.executable, "-c", SERVE_RELAYED, str(port), SD_REF, json.dumps(FAST_SD_INPUT)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, done.stderr[-3000:]
    assert json.loads(lines[-1]) == {
        "after_start": [],
        "status": "succeeded",
        "after_prediction": [],
    }

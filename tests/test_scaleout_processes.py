"""The README's scale-out guide, run: real ``repligate`` processes started with the
guide's own commands (``tests/processes.py`` reads them from README.md), on PostgreSQL,
Redis and S3 (moto's server) over real connections. Skipped, saying why, when
PostgreSQL (127.0.0.1:5432) or Redis (127.0.0.1:6379) does not answer.

One deployment for the module (one database, one bus channel, one bucket, one broker
queue prefix), as the guide recommends it: API processes queue predictions on Celery
(Redis as the broker) and a ``repligate worker`` runs them (``processes.CELERY``).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import replicate
from sqlalchemy import create_engine, text

from tests import processes
from tests.celery_workers import forget_queues
from tests.conftest import SD_VERSION
from tests.processes import ApiProcess, Deployment
from tests.s3_server import BUCKET, s3_endpoint  # noqa: F401  (a fixture)
from tests.services import redis_or_skip
from tests.test_store import temporary_postgres_url

REDIS_URL = "redis://127.0.0.1:6379/0"
BROKER_URL = "redis://127.0.0.1:6379/1"
SD_MODEL = "stability-ai/stable-diffusion"
# The cheapest local prediction: the tiny pipeline at 64x64, two steps.
CHEAP = {"prompt": "a red fox", "width": 64, "height": 64, "num_inference_steps": 2}
# One that runs for a while (a few seconds here), long enough to stop a process in the
# middle of it; nothing depends on how long.
SLOW = {**CHEAP, "num_inference_steps": 300}
TERMINAL = {"succeeded", "failed", "canceled"}
# Generous: a deadline only stops a test that hangs; nothing here is timed.
DEADLINE_SECONDS = 300.0


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    yield from temporary_postgres_url()


@pytest.fixture(scope="module")
def redis_url() -> str:
    return redis_or_skip(REDIS_URL, "the scale-out deployment")


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_weights: Path,
    postgres_url: str,
    redis_url: str,
    s3_endpoint: str,  # noqa: F811
) -> Iterator[Deployment]:
    values = {
        "DATABASE_URL": postgres_url,
        "REDIS_URL": redis_url,
        "EVENT_CHANNEL": f"repligate-test:{uuid.uuid4().hex}",
        "S3_BUCKET": BUCKET,
        "S3_ENDPOINT_URL": s3_endpoint,
        "SECRET_KEY": uuid.uuid4().hex + uuid.uuid4().hex,
        "WEIGHTS_DIR": str(tiny_weights),
        "BROKER_URL": BROKER_URL,
        "QUEUE_PREFIX": f"repligate-test-{uuid.uuid4().hex[:8]}",
    }
    stack = Deployment(values, processes.CELERY, tmp_path_factory.mktemp("scaleout"))
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        forget_queues(BROKER_URL, values["QUEUE_PREFIX"])


@pytest.fixture(scope="module")
def tokens(deployment: Deployment) -> dict[str, str]:
    """A key per test (listing is per key, so each sees only its own predictions)."""
    return deployment.create_keys("one-port", "two-ports", "restart", "burst")


@pytest.fixture(scope="module")
def pair(deployment: Deployment) -> dict[str, ApiProcess]:
    """Two separate API processes (``--workers 1`` each) on two ports: "a" and "b"."""
    return {"a": deployment.start_api(), "b": deployment.start_api()}


@pytest.fixture(autouse=True)
def _client_env(official_client_env: None) -> None:
    """Every test here runs the official client."""


def _get(url: str, token: str, path: str) -> dict[str, Any]:
    response = httpx.get(f"{url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _poll(ready: Any, what: str, interval: float = 0.2) -> Any:
    """``ready()``'s first truthy answer, polled; fails after the generous deadline."""
    stop = threading.Event()
    timer = threading.Timer(DEADLINE_SECONDS, stop.set)
    timer.start()
    try:
        while not (answer := ready()):
            if stop.wait(interval):
                pytest.fail(f"{what}: not within {DEADLINE_SECONDS:g} s")
        return answer
    finally:
        timer.cancel()


def _assert_png(url: str, token: str) -> None:
    response = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.content.startswith(b"\x89PNG\r\n\x1a\n")


def test_the_official_client_against_two_api_processes_on_one_port(
    deployment: Deployment, tokens: dict[str, str]
) -> None:
    api = deployment.start_api(processes=2)  # ready only once both answered /ready
    try:
        token = tokens["one-port"]
        client = replicate.Client(api_token=token, base_url=api.url)
        output = client.run(SD_MODEL, input=CHEAP)
        assert isinstance(output, list) and len(output) == 1
        assert output[0].startswith(f"{api.url}/files/predictions/")
        _assert_png(output[0], token)
        # Created, then read back and waited on over fresh connections: any process.
        prediction = client.predictions.create(version=SD_VERSION, input={**CHEAP, "seed": 3})
        prediction.wait()
        assert prediction.status == "succeeded", prediction.error
        again = client.predictions.get(prediction.id)
        assert (again.status, again.output) == ("succeeded", prediction.output)
    finally:
        api.stop_gracefully()


def test_the_official_client_creates_on_one_process_and_waits_on_the_other(
    tokens: dict[str, str], pair: dict[str, ApiProcess]
) -> None:
    token = tokens["two-ports"]
    on_a = replicate.Client(api_token=token, base_url=pair["a"].url)
    on_b = replicate.Client(api_token=token, base_url=pair["b"].url)
    created = on_a.predictions.create(version=SD_VERSION, input=CHEAP)
    assert created.status in ("starting", "processing", "succeeded")
    prediction = on_b.predictions.get(created.id)
    prediction.wait()  # polls B
    assert prediction.status == "succeeded", prediction.error
    assert isinstance(prediction.output, list) and len(prediction.output) == 1
    _assert_png(prediction.output[0], token)  # B serves it from the shared bucket
    listed = [p.id for p in on_b.predictions.list().results]
    assert listed == [created.id]


def test_an_api_process_stopped_during_a_sync_wait_loses_nothing(
    deployment: Deployment, tokens: dict[str, str], pair: dict[str, ApiProcess]
) -> None:
    token = tokens["restart"]
    a, b = pair["a"], pair["b"]
    answers: list[httpx.Response] = []

    def wait_on_a() -> None:
        answers.append(
            httpx.post(
                f"{a.url}/v1/predictions",
                json={"version": SD_VERSION, "input": SLOW},
                headers={"Authorization": f"Bearer {token}", "Prefer": "wait=60"},
                timeout=120,
            )
        )

    waiting = threading.Thread(target=wait_on_a)
    waiting.start()
    # B lists what A created; the signal comes once A runs it (the wait is then held).
    listed = _poll(
        lambda: [
            p for p in _get(b.url, token, "/v1/predictions")["results"] if p["status"] != "starting"
        ],
        "the prediction running on A",
    )
    prediction_id = listed[0]["id"]
    a.stop_gracefully()  # SIGTERM: A answers its held wait at once (the worker runs on)
    waiting.join(DEADLINE_SECONDS)
    assert not waiting.is_alive()
    # The client got the prediction as it stood, not an error.
    assert answers[0].status_code == 201, answers[0].text
    body = answers[0].json()
    assert body["id"] == prediction_id
    assert body["status"] in ("starting", "processing", "succeeded")
    # A comes back with the same command, on the same port.
    pair["a"] = a = deployment.restart(a)
    done = _poll(
        lambda: (
            (p := _get(b.url, token, f"/v1/predictions/{prediction_id}"))["status"] in TERMINAL
            and p
        ),
        "the prediction finishing",
    )
    assert done["status"] == "succeeded", done["error"]
    assert _get(a.url, token, f"/v1/predictions/{prediction_id}")["status"] == "succeeded"
    _assert_png(done["output"][0], token)


def test_200_concurrent_creates_on_two_processes_each_run_once(
    tokens: dict[str, str], pair: dict[str, ApiProcess], postgres_url: str
) -> None:
    token = tokens["burst"]
    headers = {"Authorization": f"Bearer {token}"}

    async def create_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=100)
        async with (
            httpx.AsyncClient(base_url=pair["a"].url, headers=headers, limits=limits) as a,
            httpx.AsyncClient(base_url=pair["b"].url, headers=headers, limits=limits) as b,
        ):
            return await asyncio.gather(
                *(
                    (a if i % 2 else b).post(
                        "/v1/predictions",
                        json={"version": SD_VERSION, "input": {**CHEAP, "seed": i}},
                        timeout=120,
                    )
                    for i in range(200)
                )
            )

    responses = asyncio.run(create_all())
    assert [r.status_code for r in responses] == [201] * 200, {r.text for r in responses}
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 200

    # Until all are done, the database says how many are (one query, read-only); then
    # the API lists them as a client sees them.
    engine = create_engine(postgres_url)
    try:

        def finished() -> bool:
            with engine.connect() as connection:
                count = connection.execute(
                    text(
                        "SELECT count(*) FROM predictions WHERE id = ANY(:ids) AND status IN "
                        "('succeeded', 'failed', 'canceled')"
                    ),
                    {"ids": sorted(ids)},
                ).scalar()
            return count == len(ids)

        _poll(finished, "200 predictions finishing", interval=1.0)
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT id, started_at, logs, attempts FROM predictions WHERE id = ANY(:ids)"),
                {"ids": sorted(ids)},
            ).all()
    finally:
        engine.dispose()
    assert _listed(pair["b"].url, token) == dict.fromkeys(ids, "succeeded")
    # Each ran once: one start, and one run in its logs.
    assert len(rows) == 200
    for prediction_id, started_at, logs, attempts in rows:
        assert started_at is not None, prediction_id
        assert (logs or "").count("Using seed:") == 1, (prediction_id, logs)
        assert attempts == 1, (prediction_id, attempts)  # claimed once, by one worker


def _listed(url: str, token: str) -> dict[str, str]:
    """Every prediction of the key, as ``GET /v1/predictions`` pages through them."""
    seen: dict[str, str] = {}
    path: str | None = "/v1/predictions"
    while path:
        page = _get(url, token, path)
        seen.update({p["id"]: p["status"] for p in page["results"]})
        path = page["next"][page["next"].index("/v1/") :] if page["next"] else None
    return seen


def test_every_guide_block_is_run(request: pytest.FixtureRequest) -> None:
    """Every ``<!-- scaleout: NAME -->`` block of the README was run by a test above, so
    the guide cannot hold a command no test starts. Meaningful only when the whole
    module ran (last, with its services there)."""
    module = request.node.nodeid.split("::")[0]
    here = [item for item in request.session.items if item.nodeid.split("::")[0] == module]
    if len(here) < len(_TESTS):
        pytest.skip("only part of this module was selected: run it whole to compare")
    if not {"env", "api"} <= processes.STARTED:
        pytest.skip("the scale-out tests did not run (their services are absent)")
    assert set(processes.guide_blocks()) - processes.STARTED == set()


def test_the_guide_parses_and_names_only_known_placeholders() -> None:
    blocks = processes.guide_blocks()
    assert {"env", "queue", "migrate", "api", "worker", "keys"} <= set(blocks)
    readme = processes.README.read_text()
    for name, lines in blocks.items():
        for line in lines:
            for placeholder in processes._PLACEHOLDER.findall(line):
                used = placeholder[0] or placeholder[1]
                assert used in processes.PLACEHOLDERS, (name, used)
                assert f"`${used}`" in readme, f"${used} is not explained in the guide"


_TESTS = [name for name in dir() if name.startswith("test_")]

"""Helpers shared by the HTTP API tests: polling a prediction, reading its images, and
apps built on changed settings. Polls use an overall deadline and short sleeps, never a
timing assertion."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi.testclient import TestClient
from PIL import Image

from repligate.app import create_app
from repligate.settings import Settings

# Generous: a shared 2-core machine can run a prediction ten times slower than idle.
POLL_TIMEOUT_SECONDS = 120.0
# For runs of seconds when idle (the seed's 768x768, 50 steps), which a busy machine
# can stretch past a sync request's 60 s wait.
LONG_RUN_TIMEOUT_SECONDS = 900.0
TERMINAL = ("succeeded", "failed", "canceled")


def poll(
    client: TestClient,
    url: str,
    headers: dict[str, str],
    until: Callable[[dict[str, Any]], bool],
    timeout: float = POLL_TIMEOUT_SECONDS,
) -> dict[str, Any]:
    """GET ``url`` until ``until(body)`` holds; fail with the last body after ``timeout``."""
    deadline = time.monotonic() + timeout
    # Short sleeps first, then longer ones: each poll takes CPU from the worker's torch
    # threads, which slow down badly when anything else runs on the 2 cores.
    pause = 0.02
    while True:
        response = client.get(url, headers=headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if until(body):
            return body
        assert time.monotonic() < deadline, f"gave up polling {url}: {body}"
        time.sleep(pause)
        pause = min(pause * 1.5, 0.5)


def finished(client: TestClient, url: str, headers: dict[str, str]) -> dict[str, Any]:
    return poll(client, url, headers, lambda body: body["status"] in TERMINAL)


def sync_outcome(
    client: TestClient,
    response: Any,
    headers: dict[str, str],
    finished_code: int,
    timeout: float = LONG_RUN_TIMEOUT_SECONDS,
) -> dict[str, Any]:
    """The finished prediction of a sync create (``Prefer: wait``, or the seed's prefix).

    Finished within the wait: the answer itself, with ``finished_code``. When a slow
    machine outlasts the wait, the answer must be Replicate's for that (201, ``starting``,
    no output yet); the same prediction is then polled to its end, so the caller asserts
    the same things either way."""
    body: dict[str, Any] = response.json()
    if body.get("status") in TERMINAL:
        assert response.status_code == finished_code, response.text
        return body
    assert response.status_code == 201, response.text
    assert body["status"] == "starting", body
    assert body["output"] is None, body
    assert response.headers["preference-applied"].startswith("wait="), response.headers
    return poll(client, body["urls"]["get"], headers, lambda b: b["status"] in TERMINAL, timeout)


def download(client: TestClient, url: str) -> bytes:
    response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return response.content


def image(client: TestClient, url: str) -> Image.Image:
    picture = Image.open(io.BytesIO(download(client, url)))
    picture.load()
    return picture


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    """The response is Replicate's problem shape with this status; returns the body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert isinstance(body["detail"], str) and body["detail"]
    return body


@contextmanager
def app_client(settings: Settings, **changes: Any) -> Iterator[TestClient]:
    """A started app on ``settings`` with ``changes`` applied (same data dir unless told)."""
    with TestClient(create_app(settings.model_copy(update=changes))) as client:
        yield client

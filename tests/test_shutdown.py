"""Stopping the server: queued predictions stay queued, a running one gets its grace
period and is then handed back (not failed), waiting requests answer at once, the log
says what it waits for, and the event loop is never blocked."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from repligate.app import build_container, create_app
from repligate.lifecycle import Status
from repligate.settings import Settings
from repligate.store import keys
from repligate.store import predictions as store
from repligate.testing.fakes import ScriptedProvider, WaitForCancel
from repligate.testing.live_server import LiveServer

SD = "stability-ai/stable-diffusion"


def server(settings: Settings, provider: ScriptedProvider) -> LiveServer:
    container = build_container(settings, provider=provider)
    return LiveServer(create_app(settings, container))


def create(base: str, auth: dict[str, str], **headers: str) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/models/{SD}/predictions",
        json={"input": {"prompt": "a fox"}},
        headers={**auth, **headers},
        timeout=120,
    )


def test_stop_hands_back_the_running_prediction_and_keeps_the_queue(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(data_dir=tmp_path / "data", shutdown_grace_seconds=0.2)
    caplog.set_level(logging.INFO, logger="repligate")
    first = server(settings, ScriptedProvider([WaitForCancel(timeout=120)])).start()
    auth = {"Authorization": f"Bearer {first.make_token()}"}
    running = create(first.url, auth).json()["id"]
    while first.container.queue.running() != [running]:  # type: ignore[attr-defined]
        threading.Event().wait(0.01)
    queued = [create(first.url, auth).json()["id"] for _ in range(2)]
    waiting: dict[str, Any] = {}

    def wait_for_one() -> None:
        waiting["reply"] = create(first.url, auth, Prefer="wait=60")

    waiter = threading.Thread(target=wait_for_one)
    waiter.start()
    while first.container.queue._jobs.qsize() < 3:  # type: ignore[attr-defined]
        threading.Event().wait(0.01)

    first.stop()
    waiter.join(60)

    # The waiting request answered when the stop began, with the prediction queued.
    assert waiting["reply"].status_code == 201
    assert waiting["reply"].json()["status"] == "starting"
    with first.container.sessions() as session:
        rows = {pid: store.get(session, pid) for pid in [running, *queued]}
    for row in rows.values():
        assert row is not None and row.status is Status.STARTING
        assert row.completed_at is None and row.error is None
    assert "queued again" in rows[running].logs  # type: ignore[union-attr]
    said = caplog.text
    assert "waiting up to 0 s for 1 running predictions" in said and running in said
    assert "handing back" in said
    assert "queued predictions stay queued" in said

    # After the restart every one of them runs.
    second = server(settings, ScriptedProvider()).start()
    try:
        every = [running, *queued, waiting["reply"].json()["id"]]
        for pid in every:
            body: dict[str, Any] = {}
            for _ in range(600):
                body = httpx.get(f"{second.url}/v1/predictions/{pid}", headers=auth).json()
                if body["status"] != "starting" and body["status"] != "processing":
                    break
                threading.Event().wait(0.05)
            assert body["status"] == "succeeded", body
    finally:
        second.stop()


def test_stopping_does_not_block_the_event_loop(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", shutdown_grace_seconds=0.5)
    container = build_container(settings, provider=ScriptedProvider([WaitForCancel(120)]))
    app = create_app(settings, container)
    spec = container.service.registry.model("stability-ai", "stable-diffusion")

    async def scenario() -> int:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        async with app.router.lifespan_context(app):
            with container.sessions() as session:
                key, _ = keys.create(session, name="k")
            container.service.create(key, spec, {"prompt": "a fox"})
            while not container.queue.running():  # type: ignore[attr-defined]
                await asyncio.sleep(0.01)
            ticker = asyncio.create_task(tick())
            await asyncio.sleep(0)
            before = ticks
        # The lifespan's exit just ran the stop: half a second of grace, then the
        # hand-back. The loop kept ticking all along.
        ticker.cancel()
        return ticks - before

    assert asyncio.run(scenario()) > 0


def test_sigterm_stops_repligate_serve_cleanly_and_says_so(tmp_path: Path) -> None:
    """The real command: SIGTERM ends it with status 0, through the app's shutdown."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "REPLIGATE_DATA_DIR": str(tmp_path / "data")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from repligate.cli import app; app()",
            "serve",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for _ in range(1200):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                threading.Event().wait(0.05)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    # uvicorn re-raises the signal once its shutdown is complete, as process managers
    # expect, so the status is "ended by SIGTERM" after a clean shutdown.
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    assert "shutdown: workers stopped" in output

"""Server-Sent Event streams (``urls.stream``) through HTTP: Replicate's events with an
id each, ending with done; a late client gets everything so far; live events arrive as
they happen; the official client's ``stream()`` reads them unchanged; and many open
streams cost no thread each."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest
import replicate

from repligate.app import build_container, create_app
from repligate.events import Log, Output
from repligate.settings import Settings
from repligate.testing.fakes import Gate, Raise, ScriptedProvider
from repligate.testing.live_server import LiveServer
from tests.api_helpers import assert_problem
from tests.fake_app import SD, FakeApp, fake_app

Event = tuple[str, str, str]  # (event, id, data)


def parse(lines: Iterable[str]) -> Iterator[Event]:
    """SSE events from lines, as a strict client reads them."""
    event, event_id = "", ""
    data: list[str] = []
    for line in lines:
        if line == "":
            if event:
                yield event, event_id, "\n".join(data)
            event, event_id, data = "", "", []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "id":
                event_id = value
            elif name == "data":
                data.append(value)


def _settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", log_flush_interval=0.0, webhook_workers=0)


def _stream(app: FakeApp, url: str, headers: dict[str, str] | None = None) -> list[Event]:
    response = app.client.get(url, headers=headers or {})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return list(parse(response.text.split("\n")))


def test_a_late_client_gets_every_event_with_ids_then_done(tmp_path: Path) -> None:
    provider = ScriptedProvider(
        script=[Log("step 1"), Output("a"), Log("step 2"), Output({"k": 1})]
    )
    with fake_app(_settings(tmp_path), provider, inline=True) as app:
        created = app.create().json()
        url = created["urls"]["stream"]
        assert url.startswith(created["urls"]["get"] + "/stream?")
        for headers in (app.auth, None):  # with the key, or by the signed URL alone
            events = _stream(app, url, headers)
            # What happened so far, told as it stands: the logs, then each output.
            assert [(e, d) for e, _, d in events] == [
                ("logs", "step 1\nstep 2\n"),
                ("output", "a"),
                ("output", '{"k": 1}'),
                ("done", "{}"),
            ]
            assert [i for _, i, _ in events] == ["0", "1", "2", "3"]
        plain = created["urls"]["get"] + "/stream"
        assert _stream(app, plain, app.auth)[-1][0] == "done"
        assert_problem(app.client.get(plain), 401)
        assert_problem(app.client.get(url.replace("sig=", "sig=x")), 401)
        assert_problem(
            app.client.get(plain.replace(created["id"], "nosuchid"), headers=app.auth), 404
        )


def test_failed_and_canceled_predictions_end_as_replicate_says(tmp_path: Path) -> None:
    provider = ScriptedProvider(scripts={SD: ([Raise("the model broke")], None)})
    with fake_app(_settings(tmp_path), provider) as app:
        failing = app.create().json()
        canceled = app.create().json()
        app.cancel(canceled["id"])
        app.queue.run_all()
        events = _stream(app, failing["urls"]["stream"])
        assert [e for e, _, _ in events][-2:] == ["error", "done"]
        assert "the model broke" in json.loads(events[-2][2])["detail"]
        assert json.loads(events[-1][2]) == {"reason": "error"}
        events = _stream(app, canceled["urls"]["stream"])
        assert [(e, json.loads(d)) for e, _, d in events] == [("done", {"reason": "canceled"})]


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[LiveServer, Gate, dict[str, str]]]:
    gate = Gate()
    provider = ScriptedProvider(script=[Log("one"), Output("a"), gate, Output("b")])
    settings = _settings(tmp_path)
    container = build_container(settings, provider=provider)
    with LiveServer(create_app(settings, container)) as server:
        yield server, gate, {"Authorization": f"Bearer {server.make_token()}"}
    gate.open()


def test_events_arrive_live_as_the_prediction_runs(
    gated: tuple[LiveServer, Gate, dict[str, str]],
) -> None:
    server, gate, auth = gated
    with httpx.Client(base_url=server.url, headers=auth, timeout=60) as client:
        created = client.post(f"/v1/models/{SD}/predictions", json={"input": {"prompt": "x"}})
        seen = []
        with client.stream("GET", created.json()["urls"]["stream"]) as response:
            for event, _, data in parse(response.iter_lines()):
                seen.append((event, data))
                if (event, data) == ("output", "a"):
                    # The run is held at the gate: this event came while it runs.
                    assert (
                        client.get(f"/v1/predictions/{created.json()['id']}").json()["status"]
                        == "processing"
                    )
                    gate.open()
    assert seen == [("logs", "one\n"), ("output", "a"), ("output", "b"), ("done", "{}")]


def test_the_official_client_streams_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REPLICATE_API_TOKEN", raising=False)
    provider = ScriptedProvider(script=[Output("Hello"), Log("half"), Output(", world")])
    settings = _settings(tmp_path)
    with LiveServer(create_app(settings, build_container(settings, provider=provider))) as server:
        client = replicate.Client(api_token=server.make_token(), base_url=server.url)
        events = list(client.stream(SD, input={"prompt": "hi"}))
        # The client's way to the webhook signing secret works too.
        assert client.webhooks.default.secret().key.startswith("whsec_")
    assert "".join(str(e) for e in events) == "Hello, world"
    # Live or late (the run may finish before the stream opens), the same content.
    names = [e.event.value for e in events]
    assert sorted(names) == ["done", "logs", "output", "output"] and names[-1] == "done"


def test_many_open_streams_cost_no_thread_each(
    gated: tuple[LiveServer, Gate, dict[str, str]],
) -> None:
    server, gate, auth = gated
    count = 200
    created = httpx.post(
        f"{server.url}/v1/models/{SD}/predictions", json={"input": {"prompt": "x"}}, headers=auth
    ).json()
    hub = server.container.streams
    opened = threading.Event()
    threads: list[int] = []

    async def one(session: aiohttp.ClientSession, ready: asyncio.Queue[None]) -> list[str]:
        events = []
        async with session.get(created["urls"]["stream"]) as response:
            assert response.status == 200
            lines: list[str] = []
            async for raw in response.content:
                line = raw.decode().rstrip("\n")
                lines.append(line)
                if line == "":
                    for event, _, _ in parse(lines):
                        events.append(event)
                        if event == "output":
                            await ready.put(None)
                    lines = []
                    if events and events[-1] == "done":
                        return events
        return events

    async def main() -> list[list[str]]:
        ready: asyncio.Queue[None] = asyncio.Queue()
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            before = threading.active_count()
            tasks = [asyncio.create_task(one(session, ready)) for _ in range(count)]
            for _ in range(count):
                await asyncio.wait_for(ready.get(), 120)
            # Every stream is open and has its first events: same threads as before.
            threads.append(threading.active_count() - before)
            threads.append(hub.count())
            opened.set()
            gate.open()
            return await asyncio.wait_for(asyncio.gather(*tasks), 120)

    results = asyncio.run(main())
    assert threads[0] <= 2, f"{threads[0]} more threads with {count} streams open"
    assert threads[1] == count
    assert all(r == ["logs", "output", "output", "done"] for r in results)
    deadline = time.monotonic() + 30
    while hub.count() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hub.count() == 0

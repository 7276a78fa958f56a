"""Webhooks through HTTP: a receiver on loopback gets the events its filter asks for, in
order, signed (checked with the standardwebhooks library and the official client's
verifier), throttled, the completion retried, after a restart too; the delivery log on
the command line; private addresses refused.

The deliverer runs no thread here (``webhook_workers=0``): the test drains the outbox
(``deliver_due``) and moves the fake clock, so nothing depends on timing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from replicate.webhook import Webhooks, WebhookSigningSecret
from standardwebhooks import Webhook, WebhookVerificationError
from typer.testing import CliRunner

from repligate.app import build_container, create_app
from repligate.cli import app as cli
from repligate.events import Log, Output
from repligate.settings import Settings
from repligate.store import db
from repligate.store import webhooks as outbox
from repligate.testing.fakes import Gate, ScriptedProvider
from repligate.testing.live_server import LiveServer
from tests.api_helpers import assert_problem
from tests.fake_app import SD, FakeApp, fake_app
from tests.test_store import temporary_postgres_url
from tests.webhook_receiver import Received, webhook_receiver

LOOPBACK = ["127.0.0.0/8"]


def _settings(tmp_path: Path, **changes: Any) -> Settings:
    values: dict[str, Any] = dict(
        data_dir=tmp_path / "data",
        log_flush_interval=0.0,
        webhook_workers=0,
        webhook_allowed_networks=LOOPBACK,
    )
    return Settings(**{**values, **changes})


def _create(app: FakeApp, webhook: str, events: list[str] | None = None, **body: Any) -> str:
    payload: dict[str, Any] = {"input": {"prompt": "a fox"}, "webhook": webhook, **body}
    if events is not None:
        payload["webhook_events_filter"] = events
    response = app.create(body=payload)
    assert response.status_code == 201, response.text
    prediction_id: str = response.json()["id"]
    return prediction_id


def _secret(app: FakeApp) -> str:
    response = app.client.get("/v1/webhooks/default/secret", headers=app.auth)
    assert response.status_code == 200
    key: str = response.json()["key"]
    return key


def _verified(received: Received, secret: str) -> dict[str, Any]:
    """The body, after both verifiers accept the signature."""
    body: dict[str, Any] = Webhook(secret).verify(received.body, received.headers)
    Webhooks.validate(
        headers=received.headers, body=received.body, secret=WebhookSigningSecret(key=secret)
    )
    return body


def _run_in_thread(app: FakeApp) -> threading.Thread:
    worker = threading.Thread(target=app.queue.run_next)
    worker.start()
    return worker


def _log(settings: Settings, prediction_id: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("REPLIGATE_DATA_DIR", str(settings.data_dir))
    result = CliRunner().invoke(cli, ["webhooks", prediction_id])
    assert result.exit_code == 0, result.output
    return result.output


def test_filtered_events_arrive_in_order_signed_with_one_completed(tmp_path: Path) -> None:
    first, second = Gate(), Gate()
    provider = ScriptedProvider(
        script=[Log("loading"), Output("a"), first, Log("more"), Output("b"), second]
    )
    with webhook_receiver() as receiver, fake_app(_settings(tmp_path), provider) as app:
        secret = _secret(app)
        assert secret.startswith("whsec_")
        assert _secret(app) == secret  # one per key, kept
        prediction_id = _create(app, receiver.url + "/hook", ["start", "output", "completed"])
        deliverer = app.container.webhooks
        worker = _run_in_thread(app)
        assert first.reached.wait(30)
        deliverer.deliver_due()
        app.clock.advance(1)
        first.open()
        assert second.reached.wait(30)
        deliverer.deliver_due()
        app.clock.advance(1)
        second.open()
        worker.join(30)
        deliverer.deliver_due()
        app.clock.advance(60)
        assert deliverer.deliver_due() == 0  # nothing left, nothing sent twice
        shown = app.get(prediction_id)

    bodies = [_verified(r, secret) for r in receiver.received]
    assert [(b["status"], b["output"]) for b in bodies] == [
        ("processing", None),
        ("processing", ["a"]),
        ("processing", ["a", "b"]),
        ("succeeded", ["a", "b"]),
    ]
    assert all(r.path == "/hook" for r in receiver.received)
    # The last body is the prediction as GET shows it (signed links aside).
    for body in (bodies[-1], shown):
        body["urls"].pop("web"), body["urls"].pop("stream")
    assert bodies[-1] == shown
    ids = [r.headers["webhook-id"] for r in receiver.received]
    assert len(set(ids)) == 4 and ids[-1] == f"msg_{prediction_id}_completed"
    # A tampered body fails both verifiers.
    tampered = receiver.received[-1].body.replace("succeeded", "failed")
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(tampered, receiver.received[-1].headers)
    with pytest.raises(Exception, match="signature"):
        Webhooks.validate(
            headers=receiver.received[-1].headers,
            body=tampered,
            secret=WebhookSigningSecret(key=secret),
        )


def test_logs_and_output_are_throttled_to_one_per_half_second(tmp_path: Path) -> None:
    first, second = Gate(), Gate()
    provider = ScriptedProvider(
        script=[Output("a"), Log("one"), Log("two"), first, Log("three"), second],
        returns=None,
    )
    with webhook_receiver() as receiver, fake_app(_settings(tmp_path), provider) as app:
        secret = _secret(app)
        _create(app, receiver.url)  # no filter: every event
        deliverer = app.container.webhooks
        worker = _run_in_thread(app)
        assert first.reached.wait(30)
        deliverer.deliver_due()
        # start, then only the newest of output, logs "one", logs "two".
        assert [b["logs"] for b in map(Received.json, receiver.received)] == ["", "one\ntwo\n"]
        app.clock.advance(0.2)
        first.open()
        assert second.reached.wait(30)
        deliverer.deliver_due()  # logs "three" came 0.2 s after the last: it waits
        assert len(receiver.received) == 2
        app.clock.advance(0.3)
        deliverer.deliver_due()
        assert len(receiver.received) == 3
        second.open()
        worker.join(30)
        deliverer.deliver_due()
    bodies = [_verified(r, secret) for r in receiver.received]
    assert [b["status"] for b in bodies] == ["processing"] * 3 + ["succeeded"]
    assert bodies[2]["logs"] == "one\ntwo\nthree\n"


def test_completed_is_retried_with_backoff_then_given_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path, webhook_retry_seconds=5)
    provider = ScriptedProvider(returns="done")
    with webhook_receiver() as receiver, fake_app(settings, provider, inline=True) as app:
        deliverer = app.container.webhooks
        receiver.answers = [500, 503]
        retried = _create(app, receiver.url + "/flaky", ["completed"])
        deliverer.deliver_due()
        assert deliverer.deliver_due() == 0  # the retry is not due yet
        log = _log(settings, retried, monkeypatch)
        assert "pending" in log and "500" in log and "2026-01-01T00:00:01" in log
        app.clock.advance(1)
        deliverer.deliver_due()
        app.clock.advance(2)
        deliverer.deliver_due()
        assert [r.path for r in receiver.received] == ["/flaky"] * 3
        assert receiver.statuses() == ["succeeded"] * 3
        assert len({r.headers["webhook-id"] for r in receiver.received}) == 1

        log = _log(settings, retried, monkeypatch)
        assert "delivered" in log
        assert [code in log for code in ("500", "503", "200")] == [True] * 3

        receiver.answers = [500] * 10
        doomed = _create(app, receiver.url + "/down", ["completed"])
        for step in (0, 1, 2, 4, 8):
            app.clock.advance(step)
            deliverer.deliver_due()
        # Tried at 0, 1 and 3 s; the next (7 s) would be past the 5 s window.
        assert [r.path for r in receiver.received].count("/down") == 3
        log = _log(settings, doomed, monkeypatch)
        assert "failed" in log and "pending" not in log


def test_a_restart_in_the_middle_of_a_run_still_delivers(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    gate = Gate()
    with webhook_receiver() as receiver:
        with fake_app(settings, ScriptedProvider(script=[Log("half way"), gate])) as app:
            secret = _secret(app)
            prediction_id = _create(app, receiver.url, ["start", "completed"])
            worker = _run_in_thread(app)
            assert gate.reached.wait(30)
        # The server stopped with the prediction running and nothing delivered; once
        # its lease runs out, the next server fails it (one try allowed here: its work
        # is lost) and delivers both events.
        assert receiver.received == []
        with fake_app(settings, ScriptedProvider(), max_attempts=1) as again:
            again.clock.advance(settings.lease_seconds + 1)
            assert again.container.reaper is not None
            assert again.container.reaper.reap() == (0, 1)
            again.container.webhooks.deliver_due()
            # The old worker wakes up: its late finish changes nothing.
            gate.open()
            worker.join(30)
            again.container.webhooks.deliver_due()
            shown = again.client.get(f"/v1/predictions/{prediction_id}", headers=app.auth).json()
        with db.connect(again.container.sessions) as session:
            events = [d.event for d, _ in outbox.delivery_log(session, prediction_id)]
    bodies = [_verified(r, secret) for r in receiver.received]
    assert [b["status"] for b in bodies] == ["processing", "failed"]
    assert "stopped responding" in bodies[1]["error"]
    assert shown["status"] == "failed"
    assert events == ["start", "completed"]


def test_private_webhook_urls_are_refused_at_create(tmp_path: Path) -> None:
    with fake_app(Settings(data_dir=tmp_path / "data"), ScriptedProvider()) as app:
        for url, reason in [
            ("http://127.0.0.1:9/hook", "loopback"),
            ("http://10.0.0.7/hook", "private"),
            ("http://169.254.169.254/latest/meta-data", "link-local"),
            ("http://metadata.google.internal/", "metadata"),
            ("http://[::1]/hook", "loopback"),
        ]:
            problem = assert_problem(app.create(body={"input": {}, "webhook": url}), 422)
            assert reason in problem["detail"]
            assert "REPLIGATE_WEBHOOK_ALLOW_PRIVATE=true" in problem["detail"]
        for url in ("ftp://example.com/hook", "not a url", "https://"):
            problem = assert_problem(app.create(body={"input": {}, "webhook": url}), 422)
            assert "webhook" in problem["detail"].lower()
        assert app.client.get("/v1/predictions", headers=app.auth).json()["results"] == []


def test_names_and_redirects_to_private_addresses_are_refused_when_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = ScriptedProvider(returns="done")
    with webhook_receiver() as receiver:
        port = receiver.url.rsplit(":", 1)[1]
        strict = _settings(tmp_path, webhook_allowed_networks=[])
        with fake_app(strict, provider, inline=True) as app:
            # A name is checked when the delivery is sent: localhost is loopback.
            named = _create(app, f"http://localhost:{port}/hook", ["completed"])
            app.container.webhooks.deliver_due()
            app.clock.advance(60)
            assert app.container.webhooks.deliver_due() == 0  # refused: never retried
        assert receiver.received == []
        log = _log(strict, named, monkeypatch)
        assert "failed" in log and "localhost resolves to 127.0.0.1" in log

        receiver.redirects = {
            "/moved": receiver.url + "/new",
            "/sneaky": "http://169.254.169.254/latest/meta-data",
        }
        with fake_app(_settings(tmp_path), provider, inline=True) as app:
            moved = _create(app, receiver.url + "/moved", ["completed"])
            sneaky = _create(app, receiver.url + "/sneaky", ["completed"])
            app.container.webhooks.deliver_due()
        paths = [r.path for r in receiver.received]
        assert sorted(paths) == ["/moved", "/new", "/sneaky"]
        # Followed with the same body and signature.
        by_path = {r.path: r for r in receiver.received}
        assert by_path["/new"].body == by_path["/moved"].body
        assert (
            by_path["/new"].headers["webhook-signature"]
            == by_path["/moved"].headers["webhook-signature"]
        )
        assert "delivered" in _log(strict, moved, monkeypatch)
        log = _log(strict, sneaky, monkeypatch)
        assert "failed" in log and "169.254.169.254 is link-local" in log


def test_allow_private_lets_webhooks_reach_loopback(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", webhook_workers=0, webhook_allow_private=True)
    provider = ScriptedProvider(returns="done")
    with webhook_receiver() as receiver, fake_app(settings, provider, inline=True) as app:
        _create(app, receiver.url, ["completed"])
        app.container.webhooks.deliver_due()
    assert receiver.statuses() == ["succeeded"]


def test_the_legacy_webhook_completed_field_gets_only_the_completion(tmp_path: Path) -> None:
    provider = ScriptedProvider(script=[Log("x")], returns="done")
    with webhook_receiver() as receiver, fake_app(_settings(tmp_path), provider) as app:
        response = app.create(body={"input": {"prompt": "a"}, "webhook_completed": receiver.url})
        assert response.status_code == 201
        app.queue.run_all()
        app.container.webhooks.deliver_due()
    assert receiver.statuses() == ["succeeded"]


def test_delivery_log_of_a_prediction_without_webhook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path)
    with fake_app(settings, ScriptedProvider(returns="x"), inline=True) as app:
        prediction_id = app.create().json()["id"]
    assert "has no webhook" in _log(settings, prediction_id, monkeypatch)
    monkeypatch.setenv("REPLIGATE_DATA_DIR", str(settings.data_dir))
    result = CliRunner().invoke(cli, ["webhooks", "nosuchprediction"])
    assert result.exit_code == 1


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from temporary_postgres_url()


def test_the_outbox_works_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    settings = _settings(tmp_path, database_url=postgres_url)
    provider = ScriptedProvider(script=[Log("x"), Output("a")], returns=None)
    with webhook_receiver() as receiver, fake_app(settings, provider, inline=True) as app:
        secret = _secret(app)
        receiver.answers = [200, 502]  # the start, then the first try of completed
        prediction_id = _create(app, receiver.url)
        app.container.webhooks.deliver_due()
        app.clock.advance(1)
        app.container.webhooks.deliver_due()
        with db.connect(app.container.sessions) as session:
            log = outbox.delivery_log(session, prediction_id)
    # Run inline, so the completion superseded the output and logs events waiting.
    assert [_verified(r, secret)["status"] for r in receiver.received] == [
        "processing",
        "succeeded",
        "succeeded",
    ]
    assert [(d.event, d.state, d.attempts) for d, _ in log] == [
        ("start", "delivered", 1),
        ("logs", "superseded", 0),
        ("output", "superseded", 0),
        ("completed", "delivered", 2),
    ]
    assert [a.status_code for a in log[-1][1]] == [502, 200]


def test_the_background_sender_delivers_on_a_live_server(tmp_path: Path) -> None:
    """As served: the deliverer's own threads send, on the real clock."""
    settings = _settings(tmp_path, webhook_workers=2)
    provider = ScriptedProvider(script=[Log("x")], returns="done")
    app = create_app(settings, build_container(settings, provider=provider))
    with webhook_receiver() as receiver, LiveServer(app) as server:
        auth = {"Authorization": f"Bearer {server.make_token()}"}
        secret = httpx.get(f"{server.url}/v1/webhooks/default/secret", headers=auth).json()["key"]
        created = httpx.post(
            f"{server.url}/v1/models/{SD}/predictions",
            json={"input": {"prompt": "a"}, "webhook": receiver.url},
            headers=auth,
        ).json()
        deadline = time.monotonic() + 60
        while "succeeded" not in receiver.statuses() and time.monotonic() < deadline:
            time.sleep(0.05)
    bodies = [_verified(r, secret) for r in receiver.received]
    assert bodies[0]["id"] == created["id"]
    assert [b["status"] for b in bodies][-1] == "succeeded"
    assert [b["status"] for b in bodies].count("succeeded") == 1
    assert bodies[-1]["urls"]["get"] == created["urls"]["get"]  # the creator's base URL

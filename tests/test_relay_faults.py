"""The relay against a fault-injecting upstream over real HTTP (tests/relay_upstream.py):
every failure path of the key pool and the upstream calls, iterator outputs as they
come, cancels reaching upstream, a restart in the middle of a prediction."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook
from typer.testing import CliRunner

from repligate.app import create_app
from repligate.cli import app as cli_app
from repligate.relay.keypool import fingerprint
from repligate.settings import Settings
from repligate.store import db
from repligate.store import relay as relay_store
from repligate.testing.live_server import LiveServer
from tests.conftest import SD_REF
from tests.relay_upstream import Fault, FaultyUpstream, png, wait_until

GOOD = "r8_good_token_aaaaaaaaaaaa"
OTHER = "r8_other_token_bbbbbbbbbbb"
BAD = "r8_bad_token_cccccccccccc"


@pytest.fixture
def upstream() -> Iterator[FaultyUpstream]:
    with FaultyUpstream({GOOD, OTHER}) as fake:
        yield fake


def relay_settings(data_dir: Path, fake: FaultyUpstream, tokens: str, **extra: Any) -> Settings:
    values: dict[str, Any] = dict(
        data_dir=data_dir,
        route="replicate",
        upstream_url=fake.url + "/v1",
        upstream_tokens=SecretStr(tokens),
        upstream_poll_min_seconds=0.02,
        upstream_poll_max_seconds=0.1,
        upstream_max_retries=2,
        upstream_backoff_seconds=0.01,
        upstream_backoff_cap_seconds=0.05,
        upstream_timeout_seconds=0.5,
        upstream_key_recheck_seconds=0.2,
        log_flush_interval=0.0,
    )
    values.update(extra)
    return Settings(**values)


class Relay:
    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.token = server.make_token()
        self.http = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )

    def create(self, inputs: dict[str, Any] | None = None, **headers: str) -> dict[str, Any]:
        body = {"version": SD_REF, "input": inputs or {"prompt": "a fox"}}
        response = self.http.post("/v1/predictions", json=body, headers=headers)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def get(self, prediction_id: str) -> dict[str, Any]:
        return dict(self.http.get(f"/v1/predictions/{prediction_id}").json())

    def ended(self, prediction_id: str) -> dict[str, Any]:
        return dict(
            wait_until(
                lambda: (
                    (p := self.get(prediction_id))["status"] in ("succeeded", "failed", "canceled")
                    and p
                ),
                f"{prediction_id} to end",
            )
        )


@pytest.fixture
def relay_for(tmp_path: Path, upstream: FaultyUpstream) -> Iterator[Any]:
    servers: list[LiveServer] = []

    def start(tokens: str = GOOD, **extra: Any) -> Relay:
        settings = relay_settings(tmp_path / "relay", upstream, tokens, **extra)
        server = LiveServer(create_app(settings)).start()
        servers.append(server)
        return Relay(server)

    yield start
    for server in servers:
        server.stop()


def finish_with_png(fake: FaultyUpstream, color: tuple[int, int, int] = (200, 10, 10)) -> None:
    prediction = wait_until(lambda: fake.predictions and fake.only(), "the upstream create")
    fake.run(prediction, "step 1\n")
    fake.add_output(prediction, color)
    fake.finish(prediction)


def test_a_refused_key_leaves_the_pool_and_comes_back_by_itself(
    relay_for: Any, upstream: FaultyUpstream, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    relay = relay_for(f"{BAD},{GOOD}")
    created = relay.create()
    finish_with_png(upstream)
    ended = relay.ended(created["id"])
    assert ended["status"] == "succeeded"
    assert upstream.count("create", 401) == 1 and upstream.only().token == GOOD
    # The output is ours, copied: the upstream file is gone and ours still serves it.
    upstream.expired_files.add(upstream.only().outputs[0].rsplit("/", 1)[1])
    copied = httpx.get(ended["output"])
    assert ended["output"].startswith(relay.server.url) and copied.content == png((200, 10, 10))

    env = {
        "REPLIGATE_DATA_DIR": str(tmp_path / "relay"),
        "REPLIGATE_UPSTREAM_TOKENS": f"{BAD},{GOOD}",
        "COLUMNS": "200",
    }

    def key_line(token: str) -> str:
        status = CliRunner().invoke(cli_app, ["upstream", "status"], env=env)
        assert status.exit_code == 0, status.output
        assert BAD not in status.output and GOOD not in status.output
        (line,) = [line for line in status.output.splitlines() if fingerprint(token) in line]
        return line

    assert " out " in key_line(BAD) and "401" in key_line(BAD)
    assert " active " in key_line(GOOD)
    upstream.valid_tokens.add(BAD)  # the operator fixed the key upstream
    wait_until(lambda: " active " in key_line(BAD), "the periodic check to bring it back")
    for text in (caplog.text, str(ended)):
        assert BAD not in text and GOOD not in text
    assert "taken out of the pool" in caplog.text


def test_a_rate_limited_key_rests_and_the_create_moves_to_the_next(
    relay_for: Any, upstream: FaultyUpstream
) -> None:
    upstream.add_fault(
        Fault("status", "create", 1, status=429, headers={"Retry-After": "30"}, token=GOOD)
    )
    relay = relay_for(f"{GOOD},{OTHER}")
    created = relay.create()
    finish_with_png(upstream)
    assert relay.ended(created["id"])["status"] == "succeeded"
    assert upstream.count("create", 429) == 1
    assert upstream.only().token == OTHER  # GOOD rests for its Retry-After


def test_5xx_slow_answers_and_dropped_connections_are_retried(
    relay_for: Any, upstream: FaultyUpstream
) -> None:
    upstream.add_fault(Fault("status", "create", 1, status=503))
    upstream.add_fault(Fault("drop", "get", 1))
    upstream.add_fault(Fault("slow", "get", 1))
    relay = relay_for()
    created = relay.create()
    finish_with_png(upstream)
    ended = relay.ended(created["id"])
    assert ended["status"] == "succeeded"
    assert ended["metrics"]["predict_time"] == 4.25  # upstream's, not ours
    assert upstream.count("create") == 2 and upstream.count("get", 0) == 1


def test_upstream_failing_past_the_retries_fails_the_prediction_saying_so(
    relay_for: Any, upstream: FaultyUpstream
) -> None:
    upstream.add_fault(Fault("status", "create", 10, status=500))
    relay = relay_for()
    ended = relay.ended(relay.create()["id"])
    assert ended["status"] == "failed"
    assert ended["error"].startswith("Replicate (upstream) failed")
    assert "3 times in a row" in ended["error"]
    assert upstream.count("create", 500) == 3


def test_an_expired_output_url_fails_with_a_clear_error(
    relay_for: Any, upstream: FaultyUpstream
) -> None:
    relay = relay_for()
    created = relay.create()
    prediction = wait_until(lambda: upstream.predictions and upstream.only(), "the create")
    upstream.expired_files.add(upstream.add_output(prediction, (1, 2, 3)))
    upstream.finish(prediction)
    ended = relay.ended(created["id"])
    assert ended["status"] == "failed"
    assert "could not be copied from upstream" in ended["error"]
    assert "404" in ended["error"] and "an hour" in ended["error"]


def test_iterator_outputs_show_file_by_file_as_they_come(
    relay_for: Any, upstream: FaultyUpstream
) -> None:
    relay = relay_for()
    created = relay.create()
    prediction = wait_until(lambda: upstream.predictions and upstream.only(), "the create")
    prediction.iterator = True
    upstream.run(prediction, "frame 1\n")
    upstream.add_output(prediction, (10, 0, 0))
    first = wait_until(
        lambda: (p := relay.get(created["id"]))["output"] and p, "the first item to show"
    )
    assert first["status"] == "processing" and len(first["output"]) == 1
    assert "frame 1" in first["logs"]
    assert httpx.get(first["output"][0]).content == png((10, 0, 0))
    upstream.add_output(prediction, (0, 20, 0))
    upstream.finish(prediction)
    ended = relay.ended(created["id"])
    assert [httpx.get(url).content for url in ended["output"]] == [
        png((10, 0, 0)),
        png((0, 20, 0)),
    ]
    assert all(url.startswith(relay.server.url) for url in ended["output"])


def test_a_cancel_reaches_upstream(relay_for: Any, upstream: FaultyUpstream) -> None:
    relay = relay_for()
    created = relay.create()
    prediction = wait_until(lambda: upstream.predictions and upstream.only(), "the create")
    upstream.run(prediction)
    wait_until(lambda: relay.get(created["id"])["status"] == "processing", "processing")
    canceled = relay.http.post(f"/v1/predictions/{created['id']}/cancel")
    assert canceled.json()["status"] == "canceled"
    wait_until(lambda: prediction.canceled, "the cancel to reach upstream")
    assert relay.get(created["id"])["status"] == "canceled"


def test_a_restart_mid_prediction_follows_it_again_without_a_second_create(
    relay_for: Any, upstream: FaultyUpstream
) -> None:
    first = relay_for()
    created = first.create()
    prediction = wait_until(lambda: upstream.predictions and upstream.only(), "the create")
    upstream.run(prediction, "before the restart\n")
    wait_until(lambda: "before" in first.get(created["id"])["logs"], "the first logs")
    first.server.stop()

    second = relay_for()
    second.http.headers["Authorization"] = f"Bearer {first.token}"
    upstream.run(prediction, "after the restart\n")
    upstream.add_output(prediction, (5, 5, 5))
    upstream.finish(prediction)
    ended = second.ended(created["id"])
    assert ended["status"] == "succeeded"
    assert ended["logs"] == "before the restart\nafter the restart\n"
    assert upstream.count("create") == 1
    assert httpx.get(ended["output"]).content == png((5, 5, 5))


def test_an_idempotency_key_makes_one_prediction_and_one_upstream_create(
    relay_for: Any, upstream: FaultyUpstream
) -> None:
    relay = relay_for()
    first = relay.create(**{"Idempotency-Key": "order-17"})
    # The upstream id was stored before the (async) create answered.
    with db.connect(relay.server.container.sessions) as session:
        (row,) = relay_store.relayed(session, [first["id"]]).values()
    assert row.upstream_id == upstream.only().id
    again = relay.create(**{"Idempotency-Key": "order-17"})
    assert again["id"] == first["id"]
    assert upstream.count("create") == 1
    assert upstream.only().body["input"] == {"prompt": "a fox"}


def test_signed_upstream_webhooks_are_taken_and_forged_ones_refused(
    relay_for: Any, upstream: FaultyUpstream
) -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    relay = relay_for(public_base_url="https://relay.example", upstream_webhook_secret=secret)
    created = relay.create()
    prediction = wait_until(lambda: upstream.predictions and upstream.only(), "the create")
    assert prediction.body["webhook"] == f"https://relay.example/relay/webhooks/{created['id']}"
    body = json.dumps({"id": prediction.id, "status": "processing", "logs": "pushed\n"})
    url = f"/relay/webhooks/{created['id']}"

    forged = Webhook("whsec_" + base64.b64encode(b"x" * 32).decode())
    refused = relay.http.post(url, content=body, headers=signed(forged, body))
    assert refused.status_code == 401
    assert relay.get(created["id"])["logs"] == ""

    taken = relay.http.post(url, content=body, headers=signed(Webhook(secret), body))
    assert taken.status_code == 204
    shown = wait_until(lambda: (p := relay.get(created["id"]))["logs"] and p, "the pushed logs")
    assert shown["logs"] == "pushed\n" and shown["status"] == "processing"
    finish_with_png(upstream)
    assert relay.ended(created["id"])["status"] == "succeeded"


def signed(hook: Webhook, body: str) -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": hook.sign("msg_1", now, body),
        "content-type": "application/json",
    }

"""Rate limits, quotas and concurrency caps per key, through HTTP and the CLI."""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path

import pytest

from repligate.ratelimit import KeyLimiter, Throttled, parse_quota, parse_rate
from repligate.records import KeyLimits
from repligate.testing.fakes import FakeClock, ScriptedProvider
from tests.api_helpers import assert_problem
from tests.conftest import make_token
from tests.fake_app import FakeApp, fake_app
from tests.operator_helpers import cli, lean_settings

THROTTLED = "Request was throttled. Your rate limit resets in ~"


def _create_as(app: FakeApp, auth: dict[str, str]) -> int:
    body = {"input": {"prompt": "a fox"}}
    path = "/v1/models/stability-ai/stable-diffusion/predictions"
    return app.client.post(path, json=body, headers=auth).status_code


def _throttled(response: object) -> int:
    """The response is Replicate's 429; returns its Retry-After (seconds)."""
    body = assert_problem(response, 429)
    assert body["detail"].startswith(THROTTLED) and body["detail"].endswith("s.")
    retry_after = int(response.headers["retry-after"])  # type: ignore[attr-defined]
    assert body["detail"] == f"{THROTTLED}{retry_after}s."
    return retry_after


def test_a_burst_of_creates_and_reads_gets_429_with_retry_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = lean_settings(
        tmp_path, monkeypatch, create_rate_limit="2/hour", read_rate_limit="3/hour"
    )
    with fake_app(settings, ScriptedProvider(returns="done"), inline=True) as app:
        ids = [app.create().json()["id"] for _ in range(2)]
        retry_after = _throttled(app.create())
        assert 1 <= retry_after <= 3600
        # Reads have their own count: creates did not use it up.
        for _ in range(3):
            assert app.client.get(f"/v1/predictions/{ids[0]}", headers=app.auth).status_code == 200
        for path in (f"/v1/predictions/{ids[0]}", "/v1/predictions", "/v1/account"):
            assert 1 <= _throttled(app.client.get(path, headers=app.auth)) <= 3600
        # Another key has counts of its own.
        other = {"Authorization": f"Bearer {make_token(app.client, 'other')}"}
        path = "/v1/models/stability-ai/stable-diffusion"
        assert app.client.get(path, headers=other).status_code == 200
        assert app.client.get("/v1/account", headers=other).status_code == 200
        assert _create_as(app, other) == 201


def test_a_bad_token_is_a_401_whatever_the_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = lean_settings(tmp_path, monkeypatch, read_rate_limit="1/hour")
    with fake_app(settings, ScriptedProvider(returns="done"), inline=True) as app:
        bad = {"Authorization": "Bearer r8_not-a-key"}
        for _ in range(3):
            assert_problem(app.client.get("/v1/predictions", headers=bad), 401)
            assert_problem(app.client.post("/v1/predictions", json={}, headers=bad), 401)


def test_per_key_limits_set_by_the_cli_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = lean_settings(
        tmp_path, monkeypatch, key_limits_cache_seconds=0.0, read_rate_limit="100/hour"
    )
    with fake_app(settings, ScriptedProvider(returns="done"), inline=True) as app:
        other = {"Authorization": f"Bearer {make_token(app.client, 'other')}"}
        shown = cli("keys", "limits", "test", "--create", "1/day", "--read", "2/day")
        assert "1/day" in shown.stdout and "2/day" in shown.stdout
        first = app.create().json()["id"]
        _throttled(app.create())
        for _ in range(2):
            assert app.client.get("/v1/predictions", headers=app.auth).status_code == 200
        _throttled(app.client.get(f"/v1/predictions/{first}", headers=app.auth))
        # The other key keeps the server's defaults.
        for _ in range(3):
            assert _create_as(app, other) == 201
        # Back to the default, and "none" lifts a limit.
        cli("keys", "limits", "test", "--create", "default", "--read", "none")
        assert app.create().status_code == 201
        for _ in range(5):
            assert app.client.get("/v1/predictions", headers=app.auth).status_code == 200
        shown = cli("keys", "limits", "test")
        assert "(server default)" in shown.stdout and "none" in shown.stdout


def test_the_cli_refuses_what_is_not_a_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = lean_settings(tmp_path, monkeypatch)
    with fake_app(settings, ScriptedProvider(returns="done")):
        for option, value in (
            ("--create", "lots"),
            ("--quota", "10/fortnight"),
            ("--concurrency", "0"),
        ):
            refused = cli("keys", "limits", "test", option, value, code=2)
            assert value in refused.output
        assert "no active key" in cli("keys", "limits", "nobody", code=1).output


def test_a_used_up_quota_is_a_402_and_what_never_ran_does_not_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str | None
) -> None:
    settings = lean_settings(tmp_path, monkeypatch, database_url, key_limits_cache_seconds=0.0)
    with fake_app(settings, ScriptedProvider(returns="done")) as app:
        cli("keys", "limits", "test", "--quota", "2/day")
        first = app.create().json()["id"]
        second = app.create().json()["id"]
        body = assert_problem(app.create(), 402)
        assert body["title"] == "Quota exhausted"
        assert body["detail"] == (
            "This API key has used its quota of 2 predictions per day (counted over the "
            "last day). Ask the server's operator to raise it."
        )
        # Canceled while queued: it never ran, so it gives its place back.
        assert app.cancel(second)["status"] == "canceled"
        third = app.create()
        assert third.status_code == 201
        app.queue.run_all()
        assert app.get(first)["status"] == "succeeded"
        assert_problem(app.create(), 402)
        # The window rolls on.
        app.clock.advance(86400 + 1)
        assert app.create().status_code == 201
        cli("keys", "limits", "test", "--quota", "none")
        assert app.create().status_code == 201


def test_a_concurrency_cap_refuses_a_create_with_a_429(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = lean_settings(tmp_path, monkeypatch, key_limits_cache_seconds=0.0)
    with fake_app(settings, ScriptedProvider(returns="done")) as app:
        cli("keys", "limits", "test", "--concurrency", "2")
        for _ in range(2):
            assert app.create().status_code == 201
        body = assert_problem(app.create(), 429)
        assert body["title"] == "Too many predictions running"
        assert "2 predictions queued or running" in body["detail"]
        assert "retry-after" not in app.create().headers
        app.queue.run_next()
        assert app.create().status_code == 201


def test_limit_notation() -> None:
    assert [str(item) for item in parse_rate("10/second;600/minute")] == [
        "10 per 1 second",
        "600 per 1 minute",
    ]
    assert parse_rate("none") == ()
    with pytest.raises(ValueError, match="600/minute"):
        parse_rate("fast")
    assert parse_quota("1000") == (1000, None)
    assert parse_quota("1000/month") == (1000, 30 * 86400)
    with pytest.raises(ValueError, match="hour"):
        parse_quota("-1")


def _redis_reachable() -> bool:
    try:
        import redis  # noqa: F401
    except ImportError:
        return False
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(
    not _redis_reachable(),
    reason="needs the redis client package (limits' Redis storage uses it) and a Redis "
    "server on 127.0.0.1:6379",
)
def test_two_processes_share_counts_on_redis(tmp_path: Path) -> None:
    from repligate.store import db, migrate

    engine = db.make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate.upgrade(engine)
    sessions = db.make_sessions(engine)
    url = "redis://127.0.0.1:6379/15"
    limiters = [
        KeyLimiter(sessions=sessions, clock=FakeClock(), read_default="3/hour", storage_url=url)
        for _ in range(2)
    ]
    # A fresh key each run: the Redis counts outlive the test (its window is an hour).
    limits = KeyLimits(api_key_id=f"key_{uuid.uuid4().hex[:12]}")

    async def burst() -> int:
        refused = 0
        for index in range(6):
            try:
                await limiters[index % 2].hit("read", limits)
            except Throttled as exc:
                assert exc.retry_after >= 1
                refused += 1
        return refused

    assert asyncio.run(burst()) == 3
    engine.dispose()


def test_the_official_client_reads_the_account_and_the_throttle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import replicate
    from replicate.exceptions import ReplicateError

    from repligate.app import build_container, create_app
    from repligate.testing.fakes import ManualQueue
    from repligate.testing.live_server import LiveServer

    settings = lean_settings(tmp_path, monkeypatch, create_rate_limit="1/hour")
    container = build_container(
        settings,
        provider=ScriptedProvider(returns="done"),
        queue=ManualQueue.factory(inline=True),
        clock=FakeClock(),
    )
    with LiveServer(create_app(settings, container)) as server:
        client = replicate.Client(api_token=server.make_token("test"), base_url=server.url)
        account = client.accounts.current()
        assert (account.type, account.username, account.name) == ("user", "test", "test")
        first = client.models.predictions.create(
            model="stability-ai/stable-diffusion", input={"prompt": "a fox"}
        )
        assert client.predictions.get(first.id).status == "succeeded"
        with pytest.raises(ReplicateError) as refused:
            client.models.predictions.create(
                model="stability-ai/stable-diffusion", input={"prompt": "a fox"}
            )
        assert refused.value.status == 429
        assert refused.value.detail is not None and refused.value.detail.startswith(THROTTLED)

"""Which models run where (relay/routes.py), and the small rules of the key pool and the
upstream client: no server needed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from repligate.models import all_models
from repligate.providers.local import LocalProvider
from repligate.relay.keypool import KeyPool, fingerprint
from repligate.relay.routes import RoutePlan
from repligate.relay.upstream import retry_after
from repligate.settings import Settings

SPECS = {spec.ref: spec for spec in all_models()}
SD, REMBG = SPECS["stability-ai/stable-diffusion"], SPECS["cjwbw/rembg"]


def plan(tmp_path: Path, **values: Any) -> RoutePlan:
    (tmp_path / "weights" / SD.key).mkdir(parents=True, exist_ok=True)
    settings = Settings(data_dir=tmp_path, weights_dir=tmp_path / "weights", **values)
    return RoutePlan(settings, LocalProvider(lambda: None))


def test_auto_runs_locally_what_has_weights_and_relays_the_rest(tmp_path: Path) -> None:
    routes = plan(tmp_path, upstream_tokens=SecretStr("r8_x"))
    assert routes.route(SD) == "local"  # runner, requirements and weights are here
    assert routes.route(SPECS["stability-ai/sdxl"]) == "replicate"  # no weights here
    assert routes.route(REMBG) == "replicate"  # no weights here either


def test_auto_without_upstream_keys_stays_local(tmp_path: Path) -> None:
    routes = plan(tmp_path)
    assert {routes.route(spec) for spec in SPECS.values()} == {"local"}


def test_routes_per_model_override_the_default(tmp_path: Path) -> None:
    routes = plan(
        tmp_path,
        route="replicate",
        routes={SD.ref: "local"},
        upstream_tokens=SecretStr("r8_x"),
    )
    assert routes.route(SD) == "local"
    assert routes.route(REMBG) == "replicate"
    assert routes.configured(REMBG) == "replicate"


def test_retry_after_takes_seconds_or_an_http_date() -> None:
    assert retry_after("7") == 7.0
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= retry_after(soon) <= 30
    assert retry_after(None) == 1.0 and retry_after("soon-ish") == 1.0


def test_the_pool_names_keys_by_fingerprint_and_redacts_tokens() -> None:
    pool = KeyPool(
        ["r8_first", "r8_second"], concurrency=1, creates_per_minute=60, requests_per_minute=60
    )
    first, second = pool.keys
    assert first.label == f"upstream key 1 ({fingerprint('r8_first')})"
    assert "r8_first" not in pool.redact("sent r8_first and r8_second")
    pool.take_out(first, "upstream answered 401")
    assert pool.pick()[0] is second
    pool.cool_down(second, 30)
    key, resting = pool.pick()
    assert key is second and 25 < resting <= 30
    pool.bring_back(first)
    assert pool.pick(exclude={second.fingerprint})[0] is first

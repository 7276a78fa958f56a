"""Usage: each finished prediction's row (measured from its real output files), the
report priced by the operator's unit prices, and GET /v1/account."""

from __future__ import annotations

import json
import threading
from decimal import Decimal
from pathlib import Path

import pytest

from repligate.events import OutputFile
from repligate.store import usage as usage_store
from repligate.testing.fakes import Gate, ScriptedProvider
from tests.fake_app import ANIMATION, ANIMATION_INPUT, SD, FakeApp, fake_app
from tests.operator_helpers import cli, gif, lean_settings, mp4, png

ANIMATE_DIFF = "lucataco/animate-diff"
PRICES = {
    SD: {"per_image": "0.01", "per_megapixel_step": "0.5", "per_predict_second": "0.001"},
    "*": {"per_frame": "0.002", "per_video_second": "0.1", "per_prediction": "0.0001"},
}


def _run_for(app: FakeApp, gate: Gate, seconds: float) -> None:
    """Run the next queued prediction, the fake clock moving ``seconds`` while it runs."""
    worker = threading.Thread(target=app.queue.run_next)
    worker.start()
    assert gate.reached.wait(30)
    app.clock.advance(seconds)
    gate.open()
    worker.join(30)


@pytest.fixture
def provider() -> ScriptedProvider:
    return ScriptedProvider(
        scripts={
            SD: (
                [Gate()],
                [
                    OutputFile("out-0.png", png(64, 48), "image/png"),
                    OutputFile("out-1.png", png(32, 32), "image/png"),
                ],
            ),
            ANIMATION: ((), [OutputFile("out.gif", gif(16, 16, 3, 100), "image/gif")]),
            ANIMATE_DIFF: ((), OutputFile("out.mp4", mp4(32, 32, 4, 8), "video/mp4")),
        }
    )


def test_each_finished_prediction_records_what_it_produced_and_the_report_prices_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    provider: ScriptedProvider,
    database_url: str | None,
) -> None:
    settings = lean_settings(tmp_path, monkeypatch, database_url)
    with fake_app(settings, provider) as app:
        sd = app.create(body={"input": {"prompt": "a fox", "num_inference_steps": 10}}).json()
        gate = provider.scripts[SD][0][0]
        assert isinstance(gate, Gate)
        _run_for(app, gate, 4.0)
        animation = app.create(ANIMATION, {"input": ANIMATION_INPUT}).json()
        video = app.create(ANIMATE_DIFF, {"input": {}}).json()
        app.queue.run_all()
        never_ran = app.create().json()
        app.cancel(never_ran["id"])
        assert app.get(sd["id"])["status"] == "succeeded"
        assert app.container.usage is not None
        app.container.usage.flush()

        with app.container.sessions() as session:
            rows = {p["id"]: usage_store.get(session, p["id"]) for p in (sd, animation, video)}
            canceled = usage_store.get(session, never_ran["id"])
        image = rows[sd["id"]]
        assert image is not None
        assert (image.model, image.status, image.predict_time) == (SD, "succeeded", 4.0)
        assert image.image_count == 2 and image.frames == 0
        assert image.pixels == 64 * 48 + 32 * 32
        assert image.pixel_steps == (64 * 48 + 32 * 32) * 10
        assert image.output_bytes == len(png(64, 48)) + len(png(32, 32))
        frames = rows[animation["id"]]
        assert frames is not None
        # Its steps are the model's default (50): not given in the input.
        assert (frames.image_count, frames.frames, frames.video_seconds) == (0, 3, 0.3)
        assert frames.pixel_steps == 16 * 16 * 3 * 50
        clip = rows[video["id"]]
        assert clip is not None
        assert (clip.image_count, clip.frames) == (0, 4)
        assert clip.video_seconds == pytest.approx(0.5, abs=0.01)
        assert clip.pixel_steps == 32 * 32 * 4 * 25
        assert canceled is not None
        assert (canceled.status, canceled.predict_time, canceled.output_bytes) == (
            "canceled",
            None,
            0,
        )

        monkeypatch.setenv("REPLIGATE_USAGE_PRICES", json.dumps(PRICES))
        # The prediction times are the fake clock's (January 2026).
        since = ["--since", "2025-12-31", "--until", "2026-01-02"]
        by_model = json.loads(cli("usage", *since, "--by", "model", "--json").stdout)
        costs = {row["model"]: Decimal(row["cost"]) for row in by_model["rows"]}
        video_seconds = Decimal(str(clip.video_seconds))
        assert costs == {
            SD: Decimal("0.02") + Decimal("0.02048") + Decimal("0.004"),
            ANIMATION: Decimal("0.006") + Decimal("0.03") + Decimal("0.0001"),
            ANIMATE_DIFF: Decimal("0.008") + Decimal("0.1") * video_seconds + Decimal("0.0001"),
        }
        sd_row = next(row for row in by_model["rows"] if row["model"] == SD)
        assert (sd_row["predictions"], sd_row["ran"], sd_row["images"]) == (2, 1, 2)
        by_key = json.loads(cli("usage", *since, "--by", "key", "--json").stdout)
        assert len(by_key["rows"]) == 1
        assert by_key["rows"][0]["key"].startswith("test (key_")
        assert Decimal(by_key["rows"][0]["cost"]) == sum(costs.values())
        assert by_key["rows"][0]["predictions"] == 4
        # Nothing in another period.
        assert json.loads(cli("usage", "--since", "7d", "--json").stdout)["rows"] == []

        # The table; a model with no price is marked, not guessed.
        monkeypatch.setenv("REPLIGATE_USAGE_PRICES", json.dumps({SD: PRICES[SD]}))
        table = cli("usage", *since, "--by", "model")
        assert SD in table.stdout and ANIMATE_DIFF in table.stdout
        assert "0.0445" in table.stdout
        assert f"no price set for: {ANIMATION}, {ANIMATE_DIFF}" in table.stderr


def test_a_price_that_is_not_data_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lean_settings(tmp_path, monkeypatch)
    monkeypatch.setenv("REPLIGATE_USAGE_PRICES", json.dumps({SD: {"per_image": "2*3"}}))
    assert SD in cli("usage", code=2).output
    monkeypatch.setenv("REPLIGATE_USAGE_PRICES", json.dumps({SD: {"per_gpu": "1"}}))
    assert "per_gpu" in cli("usage", code=2).output


def test_the_account_is_the_key_as_replicate_shows_an_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = lean_settings(tmp_path, monkeypatch)
    with fake_app(settings, ScriptedProvider()) as app:
        for prefix in ("", "/replicate"):
            response = app.client.get(f"{prefix}/v1/account", headers=app.auth)
            assert response.status_code == 200
            assert response.json() == {
                "type": "user",
                "username": "test",
                "name": "test",
                "github_url": None,
                "avatar_url": None,
            }
        assert app.client.get("/v1/account").status_code == 401

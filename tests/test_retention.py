"""Retention: finished predictions lose their data past the configured age (and show
data_removed: true), nothing else is lost; uploaded files go when they expire."""

from __future__ import annotations

from pathlib import Path

import pytest

from repligate.events import OutputFile
from repligate.retention import SweepResult
from repligate.store import usage as usage_store
from repligate.store.rows import FileRow
from repligate.testing.fakes import ScriptedProvider
from tests.fake_app import FakeApp, fake_app
from tests.operator_helpers import cli, lean_settings, png


def _files(app: FakeApp) -> list[Path]:
    root = app.container.settings.files_dir
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _sweep(app: FakeApp) -> SweepResult:
    assert app.container.sweeper is not None
    return app.container.sweeper.run_once()


@pytest.fixture
def provider() -> ScriptedProvider:
    return ScriptedProvider(returns=[OutputFile("out-0.png", png(24, 16), "image/png")])


def test_predictions_past_retention_lose_their_data_and_keep_the_rest(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    provider: ScriptedProvider,
    database_url: str | None,
) -> None:
    settings = lean_settings(tmp_path, monkeypatch, database_url, prediction_retention_seconds=3600)
    with fake_app(settings, provider, inline=True) as app:
        created = app.create(body={"input": {"prompt": "a fox", "seed": 7}}).json()
        before = app.get(created["id"])
        assert before["status"] == "succeeded" and before["data_removed"] is False
        url = before["output"][0]
        assert app.client.get(url).status_code == 200
        assert len(_files(app)) == 1
        running = app.create().json()  # inline: finished at once too
        app.clock.advance(3599)
        assert _sweep(app).predictions_cleared == 0
        app.clock.advance(2)
        later = app.create().json()  # finished now: not due yet

        result = _sweep(app)
        assert result.predictions_cleared == 2
        after = app.get(created["id"])
        assert after["data_removed"] is True
        assert (after["output"], after["input"], after["logs"]) == (None, {}, "")
        assert after["data"] == []
        # Nothing else is lost: its identity, status, times and metrics stay.
        for field in ("id", "model", "version", "status", "created_at", "completed_at"):
            assert after[field] == before[field]
        assert after["metrics"]["predict_time"] == before["metrics"]["predict_time"]
        assert app.client.get(url).status_code == 404
        page = app.client.get(after["urls"]["web"])
        assert page.status_code == 200 and created["id"] in page.text
        assert app.get(running["id"])["data_removed"] is True
        assert app.get(later["id"])["data_removed"] is False
        assert len(_files(app)) == 1  # the later prediction's output only
        listed = app.client.get("/v1/predictions", headers=app.auth).json()["results"]
        assert {p["id"]: p["data_removed"] for p in listed} == {
            created["id"]: True,
            running["id"]: True,
            later["id"]: False,
        }
        # Its usage was recorded before its files went.
        assert app.container.usage is not None
        app.container.usage.flush()
        with app.container.sessions() as session:
            usage = usage_store.get(session, created["id"])
        assert usage is not None and usage.image_count == 1 and usage.pixels == 24 * 16
        assert _sweep(app).predictions_cleared == 0


def test_without_a_retention_age_nothing_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, provider: ScriptedProvider
) -> None:
    settings = lean_settings(tmp_path, monkeypatch)
    with fake_app(settings, provider, inline=True) as app:
        created = app.create().json()
        app.clock.advance(365 * 86400)
        assert _sweep(app).predictions_cleared == 0
        assert app.get(created["id"])["data_removed"] is False
        assert app.client.get(app.get(created["id"])["output"][0]).status_code == 200


def test_uploaded_files_go_when_they_expire(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, provider: ScriptedProvider
) -> None:
    settings = lean_settings(tmp_path, monkeypatch, file_record_retention_seconds=3600)
    with fake_app(settings, provider) as app:
        uploaded = app.client.post(
            "/v1/files",
            files={"content": ("fox.png", png(8, 8), "image/png")},
            headers=app.auth,
        ).json()
        file_url = uploaded["urls"]["get"]
        assert app.client.get(file_url, headers=app.auth).status_code == 200
        assert len(_files(app)) == 1
        app.clock.advance(settings.files_ttl_seconds - 1)
        assert _sweep(app).files_removed == 0
        app.clock.advance(1)
        result = _sweep(app)
        assert (result.files_removed, result.file_rows_deleted) == (1, 0)
        assert _files(app) == []
        assert app.client.get(file_url, headers=app.auth).status_code == 404
        with app.container.sessions() as session:
            assert session.get(FileRow, uploaded["id"]) is not None
        # Its row goes file_record_retention_seconds later.
        app.clock.advance(3600)
        assert _sweep(app).file_rows_deleted == 1
        with app.container.sessions() as session:
            assert session.get(FileRow, uploaded["id"]) is None


def test_the_cli_sweeps_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, provider: ScriptedProvider
) -> None:
    settings = lean_settings(tmp_path, monkeypatch)
    with fake_app(settings, provider, inline=True) as app:
        created = app.create().json()
        # The fake clock finished it in January 2026; the CLI reads the real time.
        monkeypatch.setenv("REPLIGATE_PREDICTION_RETENTION_SECONDS", "3600")
        swept = cli("sweep")
        assert "predictions cleared: 1" in swept.stderr
        assert app.get(created["id"])["data_removed"] is True
        assert _files(app) == []

"""The whole server on PostgreSQL: the same routes, rows and recovery as on SQLite.

Skips, saying why, when no PostgreSQL server answers on 127.0.0.1:5432."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from repligate.app import create_app
from repligate.settings import Settings
from tests.conftest import FAST_SD_INPUT, SD_REF, make_token
from tests.test_store import temporary_postgres_url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from temporary_postgres_url()


@pytest.fixture
def postgres_settings(postgres_url: str, tmp_path: Path, tiny_weights: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", weights_dir=tiny_weights, database_url=postgres_url)


def test_predictions_run_list_and_cancel_on_postgres(
    postgres_url: str, postgres_settings: Settings
) -> None:
    with TestClient(create_app(postgres_settings)) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        done = client.post(
            "/replicate/v1/predictions",
            json={"version": SD_REF, "input": FAST_SD_INPUT},
            headers=auth,
        ).json()
        assert done["status"] == "succeeded", done["error"]
        assert client.get(done["data"][0]["url"]).content[:4] == b"\x89PNG"
        listed = client.get("/v1/predictions", headers=auth).json()["results"]
        assert [p["id"] for p in listed] == [done["id"]]
        again = client.post(done["urls"]["cancel"], headers=auth).json()
        assert again["status"] == "succeeded"  # terminal is final

    engine = create_engine(postgres_url)
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT status, output, logs FROM predictions WHERE id = :id"), {"id": done["id"]}
        ).one()
    engine.dispose()
    assert row.status == "succeeded"
    assert row.output == [f"storage:predictions/{done['id']}/out-0.png"]
    assert "Using seed:" in row.logs


def test_a_nul_character_in_any_input_breaks_no_write(postgres_settings: Settings) -> None:
    """PostgreSQL text cannot hold NUL: a prompt with one is stored, run and echoed as
    sent. (NUL in logs and errors: test_store.py, on PostgreSQL too.)"""
    with TestClient(create_app(postgres_settings)) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        done = client.post(
            "/replicate/v1/predictions",
            json={"version": SD_REF, "input": {**FAST_SD_INPUT, "prompt": "a red\u0000fox"}},
            headers=auth,
        )
        assert done.status_code == 200, done.text
        body = done.json()
        assert body["status"] == "succeeded", body
        assert body["input"]["prompt"] == "a red\u0000fox"
        assert client.get(body["data"][0]["url"]).content[:4] == b"\x89PNG"

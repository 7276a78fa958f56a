"""API keys end to end: each key sees only its own predictions, revoked keys stop working,
and the ``repligate keys`` commands manage keys that the server then accepts."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from repligate.cli import app as cli
from repligate.settings import Settings
from repligate.store import keys
from tests.api_helpers import app_client, assert_problem, finished
from tests.conftest import FAST_SD_INPUT, SD_REF, make_token


def _headers(token: str, scheme: str = "Bearer") -> dict[str, str]:
    return {"Authorization": f"{scheme} {token}"}


def test_a_prediction_is_invisible_to_another_key(client: TestClient) -> None:
    alice, bob = make_token(client, "alice"), make_token(client, "bob")
    created = client.post(
        "/v1/predictions", json={"version": SD_REF, "input": FAST_SD_INPUT}, headers=_headers(alice)
    ).json()
    url = created["urls"]["get"]

    assert_problem(client.get(url, headers=_headers(bob)), 404)
    assert_problem(client.post(created["urls"]["cancel"], headers=_headers(bob)), 404)
    assert client.get("/v1/predictions", headers=_headers(bob)).json()["results"] == []

    # Bob's cancel changed nothing: Alice's prediction runs to the end.
    done = finished(client, url, _headers(alice))
    assert done["status"] == "succeeded"
    listed = client.get("/v1/predictions", headers=_headers(alice)).json()["results"]
    assert [p["id"] for p in listed] == [created["id"]]


@pytest.mark.parametrize("scheme", ["Bearer", "Token", "bearer", "token"])
def test_bearer_and_token_schemes_are_accepted(client: TestClient, token: str, scheme: str) -> None:
    response = client.get("/v1/predictions", headers=_headers(token, scheme))
    assert response.status_code == 200, response.text


def test_a_revoked_key_gets_401(client: TestClient) -> None:
    token = make_token(client, "temporary")
    assert client.get("/v1/predictions", headers=_headers(token)).status_code == 200
    with client.app.state.container.sessions() as session:  # type: ignore[attr-defined]
        assert keys.revoke(session, key_id_or_name="temporary") == 1
    problem = assert_problem(client.get("/v1/predictions", headers=_headers(token)), 401)
    assert problem["detail"] == "You did not pass a valid authentication token"
    body = {"version": SD_REF, "input": FAST_SD_INPUT}
    assert_problem(client.post("/v1/predictions", json=body, headers=_headers(token)), 401)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data dir the CLI reads from REPLIGATE_DATA_DIR (no other REPLIGATE_ settings)."""
    directory = tmp_path / "cli-data"
    monkeypatch.setenv("REPLIGATE_DATA_DIR", str(directory))
    monkeypatch.delenv("REPLIGATE_DATABASE_URL", raising=False)
    return directory


def _cli(*args: str) -> tuple[str, str]:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout, result.stderr


def test_cli_keys_create_list_revoke_against_the_server(data_dir: Path, settings: Settings) -> None:
    stdout, _ = _cli("keys", "create", "--name", "laptop")
    token = stdout.strip().splitlines()[-1]
    assert token.startswith("r8_") and " " not in token

    listed, _ = _cli("keys", "list")
    assert "laptop" in listed
    assert token not in listed
    assert token[10:20] not in listed  # not even a later part of it

    with app_client(settings, data_dir=data_dir) as client:
        assert client.get("/v1/predictions", headers=_headers(token)).status_code == 200
        response = client.post(
            "/v1/predictions",
            json={"version": SD_REF, "input": FAST_SD_INPUT},
            headers={**_headers(token, "Token"), "Prefer": "wait"},
        )
        assert response.status_code == 201 and response.json()["status"] == "succeeded"

        _cli("keys", "revoke", "laptop")
        assert_problem(client.get("/v1/predictions", headers=_headers(token)), 401)

    # Revoking again: nothing active by that name, a clear non-zero exit.
    again = CliRunner().invoke(cli, ["keys", "revoke", "laptop"])
    assert again.exit_code == 1
    assert "laptop" in again.output


def test_the_database_keeps_only_a_hash_of_the_token(data_dir: Path) -> None:
    stdout, _ = _cli("keys", "create", "--name", "hashed")
    token = stdout.strip().splitlines()[-1]
    with sqlite3.connect(data_dir / "repligate.db") as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(api_keys)")]
        rows = db.execute("SELECT * FROM api_keys").fetchall()
    assert len(rows) == 1
    values = dict(zip(columns, rows[0], strict=True))
    assert values["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    for column, value in values.items():
        # Only the short display prefix (`r8_` + 7 characters) may be kept in clear.
        assert token[10:] not in str(value), column

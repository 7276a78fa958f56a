"""Models and versions over HTTP: each of the ten with its latest version and an
openapi_schema whose components.schemas equal Replicate's reference exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from repligate.models import all_models
from tests.api_helpers import assert_problem

REFERENCE_DIR = Path("/work/shared/models")
SPECS = {spec.ref: spec for spec in all_models()}


def _reference(ref: str) -> dict[str, Any]:
    """Replicate's published document for the model, from the shared reference set (not the
    package's own copy, which is what is under test); skipped where that set is absent."""
    owner, name = ref.split("/")
    shared = REFERENCE_DIR / f"{owner}__{name}.json"
    if shared.exists():
        document: dict[str, Any] = json.loads(shared.read_text(encoding="utf-8"))
        return document
    pytest.skip(f"no reference schema at {shared}")


def _ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_there_are_ten_models_all_listed(client: TestClient, auth: dict[str, str]) -> None:
    assert len(SPECS) == 10
    page = _ok(client.get("/v1/models", headers=auth))
    assert {f"{m['owner']}/{m['name']}" for m in page["results"]} == set(SPECS)


@pytest.mark.parametrize("ref", sorted(SPECS))
@pytest.mark.parametrize("prefix", ["/v1", "/replicate/v1"])
def test_model_and_version_carry_the_reference_schema(
    client: TestClient, auth: dict[str, str], ref: str, prefix: str
) -> None:
    reference = _reference(ref)
    owner, name = ref.split("/")
    model = _ok(client.get(f"{prefix}/models/{ref}", headers=auth))
    assert (model["owner"], model["name"]) == (owner, name)
    latest = model["latest_version"]
    assert latest["id"] == reference["version"] == SPECS[ref].version

    versions = _ok(client.get(f"{prefix}/models/{ref}/versions", headers=auth))
    assert [v["id"] for v in versions["results"]] == [latest["id"]]

    version = _ok(client.get(f"{prefix}/models/{ref}/versions/{latest['id']}", headers=auth))
    for shown in (latest, versions["results"][0], version):
        assert shown["id"] == reference["version"]
        assert isinstance(shown["cog_version"], str) and shown["cog_version"]
        assert isinstance(shown["created_at"], str) and shown["created_at"].endswith("Z")
        schemas = shown["openapi_schema"]["components"]["schemas"]
        assert schemas == reference["components"]["schemas"]


def test_unknown_model_and_version_are_404(client: TestClient, auth: dict[str, str]) -> None:
    assert_problem(client.get("/v1/models/nobody/nothing", headers=auth), 404)
    assert_problem(client.get("/v1/models/nobody/nothing/versions", headers=auth), 404)
    version = SPECS["stability-ai/stable-diffusion"].version
    # A real version under another model's name is not that model's version.
    assert_problem(
        client.get(f"/v1/models/stability-ai/sdxl/versions/{version}", headers=auth), 404
    )
    assert_problem(
        client.get("/v1/models/stability-ai/stable-diffusion/versions/" + "0" * 64, headers=auth),
        404,
    )


def test_models_need_a_key(client: TestClient) -> None:
    version = SPECS["cjwbw/rembg"].version
    for path in (
        "/v1/models",
        "/v1/models/cjwbw/rembg",
        "/v1/models/cjwbw/rembg/versions",
        f"/v1/models/cjwbw/rembg/versions/{version}",
        "/replicate/v1/models/cjwbw/rembg",
    ):
        assert_problem(client.get(path), 401)
        bad = client.get(path, headers={"Authorization": "Bearer r8_unknown"})
        assert_problem(bad, 401)

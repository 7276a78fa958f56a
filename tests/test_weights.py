"""Where weights come from, and what a user sees when they are missing."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from repligate.app import create_app
from repligate.models.spec import ModelSpec
from repligate.settings import Settings
from tests.conftest import FAST_SD_INPUT, SD_REF, make_token


def test_missing_weights_fail_the_prediction_saying_what_to_set(tmp_path: Path) -> None:
    # No local directory for the model, and the hub is offline (HF_HUB_OFFLINE=1 in tests).
    settings = Settings(data_dir=tmp_path / "data", weights_dir=tmp_path / "empty")
    with TestClient(create_app(settings)) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        response = client.post(
            "/v1/predictions",
            json={"version": SD_REF, "input": FAST_SD_INPUT},
            headers={**auth, "Prefer": "wait=30"},
        )
        body = response.json()
    assert response.status_code == 201
    assert body["status"] == "failed"
    assert "REPLIGATE_WEIGHTS_DIR" in body["error"]
    assert "stabilityai/stable-diffusion-2-1" in body["error"]
    assert str(tmp_path / "empty" / "stability-ai__stable-diffusion") in body["error"]


def test_pipeline_loads_once_and_is_shared(client: TestClient, auth: dict[str, str]) -> None:
    provider = client.app.state.container.provider  # type: ignore[attr-defined]
    for seed in (1, 2):
        response = client.post(
            "/replicate/v1/predictions",
            json={"version": SD_REF, "input": {**FAST_SD_INPUT, "seed": seed}},
            headers=auth,
        )
        assert response.json()["status"] == "succeeded"
        if seed == 1:
            first = provider.runner(provider_spec(client)).pipeline()
    assert provider.runner(provider_spec(client)).pipeline() is first
    assert client.get("/health").json()["models_loaded"] == ["stability-ai/stable-diffusion"]


def provider_spec(client: TestClient) -> ModelSpec:
    registry = client.app.state.container.service.registry  # type: ignore[attr-defined]
    return registry.model("stability-ai", "stable-diffusion")


def test_random_weights_are_announced_in_the_logs(client: TestClient, auth: dict[str, str]) -> None:
    response = client.post(
        "/replicate/v1/predictions", json={"version": SD_REF, "input": FAST_SD_INPUT}, headers=auth
    )
    assert "tiny random weights" in response.json()["logs"]


def test_without_the_ml_stack_local_models_are_refused_saying_what_to_install(
    client: TestClient, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A relay-only install (no `local` extra) has no torch: say so at create, not later.
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "torch" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    response = client.post(
        "/v1/predictions", json={"version": SD_REF, "input": FAST_SD_INPUT}, headers=auth
    )
    assert response.status_code == 422
    body = response.json()
    assert body["title"] == "Model not available"
    assert "lacks torch" in body["detail"] and "repligate[local]" in body["detail"]
    assert client.get("/v1/predictions", headers=auth).json()["results"] == []

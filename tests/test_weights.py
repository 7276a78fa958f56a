"""Where weights come from, and what a user sees when they are missing."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from repligate.app import create_app
from repligate.models import all_models
from repligate.models.spec import ModelSpec
from repligate.runners.weights import WeightsLocator, WeightsUnavailable
from repligate.settings import Settings
from tests.api_helpers import finished
from tests.conftest import FAST_SD_INPUT, SD_REF, make_token

MODELS = {spec.ref: spec for spec in all_models()}


def body_url(body: dict[str, Any]) -> str:
    return f"/v1/predictions/{body['id']}"


def test_missing_weights_fail_the_prediction_saying_what_to_set(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # No local directory for the model, and the hub is offline (HF_HUB_OFFLINE=1 in tests).
    settings = Settings(data_dir=tmp_path / "data", weights_dir=tmp_path / "empty")
    caplog.set_level(logging.WARNING)
    with TestClient(create_app(settings)) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        errors = []
        for _ in range(2):
            response = client.post(
                "/v1/predictions",
                json={"version": SD_REF, "input": FAST_SD_INPUT},
                headers={**auth, "Prefer": "wait=60"},
            )
            assert response.status_code == 201
            body = finished(client, body_url(response.json()), auth)
            assert body["status"] == "failed"
            errors.append(body["error"])
    where = tmp_path / "empty" / "stability-ai__stable-diffusion"
    assert errors[0] == (
        "The weights of stability-ai/stable-diffusion are not available: the Hugging Face hub "
        "is off (HF_HUB_OFFLINE) and stabilityai/stable-diffusion-2-1 is not in its cache.\n"
        f"Put them in {where}/ (REPLIGATE_WEIGHTS_DIR={tmp_path / 'empty'}), or give this "
        "server network access to the Hugging Face repo stabilityai/stable-diffusion-2-1. "
        "To try the API without them, `make demo` serves tiny random weights."
    )
    assert errors[1] == errors[0]
    # Not the libraries' advice, which means nothing to a user of the API.
    assert "local_files_only" not in errors[0] and "stacktrace" not in errors[0]
    # A known failure is logged as one line, with no traceback (nor the chained library
    # exceptions it replaces).
    assert "Traceback (most recent call last)" not in caplog.text
    assert caplog.text.count("prediction ") >= 2
    assert "local_files_only" not in caplog.text


def test_weights_errors_name_the_cause_and_the_fix(tmp_path: Path) -> None:
    spec = MODELS["stability-ai/stable-diffusion"]
    unset = WeightsLocator(None)

    def load_raising(exc: Exception) -> str:
        def loader(source: str) -> None:
            raise exc

        with pytest.raises(WeightsUnavailable) as caught:
            unset.load(spec, loader)
        assert caught.value.__cause__ is None and caught.value.__suppress_context__
        first, second = str(caught.value).split("\n")
        assert second == (
            "Put them in $REPLIGATE_WEIGHTS_DIR/stability-ai__stable-diffusion/ (set "
            "REPLIGATE_WEIGHTS_DIR), or give this server network access to the Hugging Face "
            "repo stabilityai/stable-diffusion-2-1. To try the API without them, `make demo` "
            "serves tiny random weights."
        )
        return first

    gated = type("GatedRepoError", (OSError,), {})("401 Client Error ... gated")
    assert load_raising(gated).endswith("is gated: accept its terms and set HF_TOKEN.")
    try:
        raise OSError("Cannot load model: pass 'local_files_only=False'") from type(
            "ConnectError", (Exception,), {}
        )("[Errno 111] Connection refused")
    except OSError as exc:
        unreachable = exc
    assert load_raising(unreachable).endswith(
        "the Hugging Face hub is not reachable and stabilityai/stable-diffusion-2-1 is not "
        "in its cache."
    )
    # An error that is not about the files is not dressed up as one.
    with pytest.raises(MemoryError):
        unset.load(spec, lambda source: (_ for _ in ()).throw(MemoryError("out of memory")))
    # A broken local directory: the loader's own first line, and only the directory to fix.
    (tmp_path / spec.key).mkdir()
    local = WeightsLocator(tmp_path)

    def broken(source: str) -> None:
        raise OSError("Error no file named model_index.json found in directory.\nmore text")

    with pytest.raises(WeightsUnavailable) as caught:
        local.load(spec, broken)
    assert str(caught.value) == (
        f"The weights of stability-ai/stable-diffusion are not available: loading "
        f"{tmp_path / spec.key} failed: OSError: Error no file named model_index.json found "
        f"in directory.\nPut them in {tmp_path / spec.key}/ (REPLIGATE_WEIGHTS_DIR={tmp_path}). "
        "To try the API without them, `make demo` serves tiny random weights."
    )


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

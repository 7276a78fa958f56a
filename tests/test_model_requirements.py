"""Each model declares what its runner needs installed; a model is refused at create only
for its own missing requirements, and the refusal names what to install."""

from __future__ import annotations

import dataclasses
import importlib.machinery
import importlib.util
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from repligate.models import all_models
from repligate.models.spec import DIFFUSERS, DIFFUSERS_WITH_PEFT, ONNX
from repligate.providers.local import LocalProvider
from tests.conftest import FAST_SD_INPUT, SD_REF

MODELS = {spec.ref: spec for spec in all_models()}
REMBG = MODELS["cjwbw/rembg"]
LOCAL_EXTRA = "pip install 'repligate[local]'"


@pytest.fixture
def hide(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``hide("torch")``: find_spec says these modules are not installed;
    ``hide(found=("onnxruntime",))`` says these are."""
    real_find_spec = importlib.util.find_spec

    def install(*hidden: str, found: tuple[str, ...] = ()) -> None:
        def find_spec(name: str, *args: Any) -> Any:
            if name in hidden:
                return None
            if name in found:
                return importlib.machinery.ModuleSpec(name, None)
            return real_find_spec(name, *args)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)

    return install


def test_every_model_declares_its_requirements() -> None:
    for spec in MODELS.values():
        assert spec.requires.modules and spec.requires.install, spec.ref
    assert {ref for ref, spec in MODELS.items() if spec.requires is ONNX} == {
        "cjwbw/rembg",
        "sujaykhandekar/object-removal",
    }
    # Every model with a runner today is a diffusers one (Flux's LoRAs also need peft).
    diffusers = (DIFFUSERS, DIFFUSERS_WITH_PEFT)
    assert all(spec.requires in diffusers for spec in MODELS.values() if spec.runner)


def test_without_torch_a_diffusers_model_is_refused_naming_what_to_install(
    client: TestClient, auth: dict[str, str], hide: Callable[..., None]
) -> None:
    # A relay-only install (no `local` extra) has no torch: say so at create, not later.
    hide("torch")
    response = client.post(
        "/v1/predictions", json={"version": SD_REF, "input": FAST_SD_INPUT}, headers=auth
    )
    assert response.status_code == 422
    body = response.json()
    assert body["title"] == "Model not available"
    assert body["detail"] == (
        "stability-ai/stable-diffusion runs locally with torch, diffusers, transformers, and "
        "this install lacks torch: install repligate with its `local` extra (pip install "
        "'repligate[local]', or make install)."
    )
    assert client.get("/v1/predictions", headers=auth).json()["results"] == []


def test_without_torch_an_onnx_model_is_not_refused_for_torch(
    client: TestClient, auth: dict[str, str], hide: Callable[..., None]
) -> None:
    hide("torch", "diffusers", "transformers")
    response = client.post(
        "/v1/predictions",
        json={"version": REMBG.version, "input": {"image": "https://example.com/a.png"}},
        headers=auth,
    )
    # Refused only because rembg has no runner yet: nothing about torch or the local extra.
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail == (
        "cjwbw/rembg is known to this server and its input is valid, but this server has no "
        "runner for it yet."
    )


def _never_built() -> Any:
    raise AssertionError("checking requirements must not build the runner env")


def test_an_onnx_model_with_a_runner_needs_onnxruntime_only(hide: Callable[..., None]) -> None:
    with_runner = dataclasses.replace(REMBG, runner=lambda env, spec: object())  # type: ignore[arg-type,return-value]
    hide("torch", "diffusers", "transformers", found=("onnxruntime",))
    assert LocalProvider(_never_built).unavailable(with_runner) is None
    hide("onnxruntime")
    assert LocalProvider(_never_built).unavailable(with_runner) == (
        "cjwbw/rembg runs locally with onnxruntime, and this install lacks onnxruntime: "
        "pip install onnxruntime."
    )
    # The diffusers models, by contrast, are refused for torch.
    hide("torch")
    refusal = LocalProvider(_never_built).unavailable(MODELS["stability-ai/sdxl"])
    assert refusal is not None and "lacks torch" in refusal and LOCAL_EXTRA in refusal

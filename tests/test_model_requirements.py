"""Each model declares what its runner needs installed; a model is refused at create only
for its own missing requirements, and the refusal names what to install."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from repligate.models import all_models
from repligate.models.spec import DIFFUSERS, DIFFUSERS_WITH_PEFT
from repligate.providers.local import LocalProvider
from tests.api_helpers import finished
from tests.conftest import FAST_SD_INPUT, SD_REF
from tests.sd_family import data_uri, noise_image

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
    # rembg runs on the rembg library and onnxruntime alone: no torch.
    assert REMBG.requires.modules == ("rembg", "onnxruntime")
    # object-removal's networks are plain torch; its edges come from scikit-image.
    assert MODELS["sujaykhandekar/object-removal"].requires.modules == ("torch", "skimage")
    # Every other model with a runner is a diffusers one (Flux's LoRAs also need peft).
    diffusers = (DIFFUSERS, DIFFUSERS_WITH_PEFT)
    assert all(
        spec.requires in diffusers
        for spec in MODELS.values()
        if spec.runner and spec.ref not in ("sujaykhandekar/object-removal", "cjwbw/rembg")
    )


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


def test_without_torch_rembg_is_created_and_runs(
    client: TestClient, auth: dict[str, str], hide: Callable[..., None]
) -> None:
    # find_spec says torch is missing: the runner env is built without it (CPU device,
    # no torch thread count) and rembg needs none of it. (test_rembg_without_torch.py runs
    # it in a process where importing torch fails.)
    hide("torch", "diffusers", "transformers")
    response = client.post(
        "/v1/predictions",
        json={"version": REMBG.version, "input": {"image": data_uri(noise_image(24, 16))}},
        headers={**auth, "Prefer": "wait"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    if body["status"] not in ("succeeded", "failed"):
        body = finished(client, body["urls"]["get"], auth)
    assert body["status"] == "succeeded", body["error"]
    assert body["output"].endswith("/out.png")


def _never_built() -> Any:
    raise AssertionError("checking requirements must not build the runner env")


def test_rembg_needs_rembg_and_onnxruntime_only(hide: Callable[..., None]) -> None:
    hide("torch", "diffusers", "transformers", found=("rembg", "onnxruntime"))
    assert LocalProvider(_never_built).unavailable(REMBG) is None
    hide("onnxruntime")
    assert LocalProvider(_never_built).unavailable(REMBG) == (
        "cjwbw/rembg runs locally with rembg, onnxruntime, and this install lacks "
        "onnxruntime: install repligate with its `rembg` extra (pip install "
        "'repligate[rembg]')."
    )
    # The diffusers models, by contrast, are refused for torch.
    hide("torch")
    refusal = LocalProvider(_never_built).unavailable(MODELS["stability-ai/sdxl"])
    assert refusal is not None and "lacks torch" in refusal and LOCAL_EXTRA in refusal

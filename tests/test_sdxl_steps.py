"""SDXL inputs that would run no denoising step are refused at create, naming the input and
the values that work; a missing refiner says what to set. Also SD img2img's steps."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from repligate.models import all_models
from repligate.settings import Settings
from tests.api_helpers import app_client, assert_problem
from tests.conftest import make_token
from tests.test_sdxl import FAST, SDXL_REF, noise_image, png_uri, predict

IMG2IMG_VERSION = next(
    spec.version for spec in all_models() if spec.name == "stable-diffusion-img2img"
)


def _refused(client: TestClient, auth: dict[str, str], version: str, **inputs: Any) -> Any:
    response = client.post(
        "/v1/predictions", json={"version": version, "input": inputs}, headers=auth
    )
    body = assert_problem(response, 422)
    assert body["title"] == "Input validation failed"
    return body["invalid_fields"]


@pytest.mark.parametrize(
    ("changes", "kind", "field", "description"),
    [
        (
            {"refine": "base_image_refiner", "refine_steps": 2},
            "number_gte",
            "input.refine_steps",
            "With refine: base_image_refiner, only refine_steps x 0.3 of the steps run, and "
            "2 x 0.3 runs none: use refine_steps of at least 4",
        ),
        (
            # Without refine_steps the refiner runs num_inference_steps (x 0.3).
            {"refine": "base_image_refiner", "num_inference_steps": 3},
            "number_gte",
            "input.num_inference_steps",
            "With refine: base_image_refiner, only num_inference_steps x 0.3 of the steps "
            "run, and 3 x 0.3 runs none: use num_inference_steps of at least 4",
        ),
        (
            {"image": "data:image/png;base64,iVBORw0KGgo=", "prompt_strength": 0.1},
            "number_gte",
            "input.num_inference_steps",
            "With an image, only num_inference_steps x prompt_strength of the steps run, and "
            "2 x 0.1 runs none: use num_inference_steps of at least 10, or a larger "
            "prompt_strength",
        ),
        (
            {"image": "data:image/png;base64,iVBORw0KGgo=", "prompt_strength": 0},
            "number_gt",
            "input.prompt_strength",
            "With an image, a prompt_strength of 0 runs no denoising step: use more than 0",
        ),
    ],
)
def test_sdxl_steps_that_run_nothing_are_refused_at_create(
    client: TestClient,
    auth: dict[str, str],
    changes: dict[str, Any],
    kind: str,
    field: str,
    description: str,
) -> None:
    fields = _refused(client, auth, SDXL_REF, **{**FAST, **changes})
    assert fields == [{"type": kind, "field": field, "description": description}]
    assert client.get("/v1/predictions", headers=auth).json()["results"] == []


def test_the_fewest_refiner_steps_named_work(client: TestClient, auth: dict[str, str]) -> None:
    body = predict(client, auth, refine="base_image_refiner", num_inference_steps=2, refine_steps=4)
    assert body["status"] == "succeeded", body["error"]
    picture = png_uri(noise_image(64, 64))
    body = predict(client, auth, image=picture, prompt_strength=0.1, num_inference_steps=10)
    assert body["status"] == "succeeded", body["error"]


def test_sd_img2img_steps_that_run_nothing_are_refused(
    client: TestClient, auth: dict[str, str]
) -> None:
    fields = _refused(
        client,
        auth,
        IMG2IMG_VERSION,
        prompt="a fox",
        image="data:image/png;base64,iVBORw0KGgo=",
        prompt_strength=0.03,
    )
    assert fields == [
        {
            "type": "number_gte",
            "field": "input.num_inference_steps",
            "description": "With an image, only num_inference_steps x prompt_strength of the "
            "steps run, and 25 x 0.03 runs none: use num_inference_steps of at least 34, or a "
            "larger prompt_strength",
        }
    ]


def test_a_missing_refiner_says_where_to_put_it(
    settings: Settings, tiny_weights: Path, tmp_path: Path
) -> None:
    # The tiny SDXL base, without its refiner/ folder; the hub is offline in tests.
    weights = tmp_path / "weights"
    base = weights / "stability-ai__sdxl"
    base.mkdir(parents=True)
    for entry in (tiny_weights / "stability-ai__sdxl").iterdir():
        if entry.name != "refiner":
            os.symlink(entry, base / entry.name)
    with app_client(settings, weights_dir=weights) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        body = predict(client, auth, refine="expert_ensemble_refiner")
    assert body["status"] == "failed"
    assert body["error"] == (
        "The weights of the SDXL refiner are not available: the Hugging Face hub is off "
        "(HF_HUB_OFFLINE) and stabilityai/stable-diffusion-xl-refiner-1.0 is not in its "
        f"cache.\nPut them in {base / 'refiner'}/ (REPLIGATE_WEIGHTS_DIR={weights}), or give "
        "this server network access to the Hugging Face repo "
        "stabilityai/stable-diffusion-xl-refiner-1.0. To try the API without them, `make "
        "demo` serves tiny random weights."
    )

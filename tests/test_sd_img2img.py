"""stability-ai/stable-diffusion-img2img through the HTTP API, on tiny random weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from repligate.models import stable_diffusion, stable_diffusion_img2img
from repligate.settings import Settings
from tests.api_helpers import app_client
from tests.conftest import FAST_SD_INPUT, SD_REF, make_token
from tests.sd_family import (
    IMG2IMG_REF,
    SCHEDULERS,
    data_uri,
    noise_image,
    output_images,
    output_names,
    predict,
)


def fast_input(**changes: Any) -> dict[str, Any]:
    inputs = {
        "prompt": "a watercolour harbour",
        "image": data_uri(noise_image(64, 64)),
        "num_inference_steps": 4,
        "prompt_strength": 0.5,
        "seed": 9,
    }
    return {**inputs, **changes}


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_keeps_the_input_size_floored_to_32(
    client: TestClient, auth: dict[str, str], scheduler: str
) -> None:
    # As diffusers 0.10 did for the original: 100x76 -> 96x64 (today's diffusers: 96x72).
    body = predict(
        client,
        auth,
        IMG2IMG_REF,
        fast_input(scheduler=scheduler, image=data_uri(noise_image(100, 76))),
    )
    [picture] = output_images(client, body)
    assert picture.size == (96, 64)
    assert output_names(body) == ["out-0.png"]


def test_an_input_of_multiples_of_32_keeps_its_size(
    client: TestClient, auth: dict[str, str]
) -> None:
    body = predict(client, auth, IMG2IMG_REF, fast_input(image=data_uri(noise_image(64, 96))))
    assert [picture.size for picture in output_images(client, body)] == [(64, 96)]


def test_prompt_strength_sets_how_many_steps_run_and_changes_the_image(
    client: TestClient, auth: dict[str, str]
) -> None:
    weak = predict(client, auth, IMG2IMG_REF, fast_input(prompt_strength=0.25))
    strong = predict(client, auth, IMG2IMG_REF, fast_input(prompt_strength=1.0))
    # int(num_inference_steps * strength) steps run: 1 of 4, then all 4.
    assert "1/1" in weak["logs"] and "2/" not in weak["logs"]
    assert "4/4" in strong["logs"]
    [weak_image], [strong_image] = output_images(client, weak), output_images(client, strong)
    assert not np.array_equal(np.asarray(weak_image), np.asarray(strong_image))


def test_eight_outputs_in_one_batch(client: TestClient, auth: dict[str, str]) -> None:
    body = predict(client, auth, IMG2IMG_REF, fast_input(num_outputs=8, num_inference_steps=2))
    assert output_names(body) == [f"out-{i}.png" for i in range(8)]
    pictures = output_images(client, body)
    assert {picture.size for picture in pictures} == {(64, 64)}
    assert not np.array_equal(np.asarray(pictures[0]), np.asarray(pictures[7]))


def test_nine_outputs_are_refused(client: TestClient, auth: dict[str, str]) -> None:
    response = client.post(
        "/replicate/v1/predictions",
        json={"version": IMG2IMG_REF, "input": fast_input(num_outputs=9)},
        headers=auth,
    )
    assert response.status_code == 422, response.text


def test_an_image_smaller_than_32_pixels_fails_with_a_reason(
    client: TestClient, auth: dict[str, str]
) -> None:
    body = predict(client, auth, IMG2IMG_REF, fast_input(image=data_uri(noise_image(20, 64))))
    assert body["status"] == "failed"
    assert "at least 32 pixels" in body["error"]


def test_a_prompt_strength_above_one_fails_with_a_reason(
    client: TestClient, auth: dict[str, str]
) -> None:
    body = predict(client, auth, IMG2IMG_REF, fast_input(prompt_strength=1.5))
    assert body["status"] == "failed"
    assert "strength" in body["error"]


def test_img2img_shares_the_weights_stable_diffusion_loaded(
    tmp_path: Path, tiny_weights: Path, settings: Settings
) -> None:
    """Both default to SD 2.1: pointed at the same weights, the modules load once."""
    weights = tmp_path / "weights"
    weights.mkdir()
    sd_dir = weights / "stability-ai__stable-diffusion"
    sd_dir.symlink_to(tiny_weights / "stability-ai__stable-diffusion")
    (weights / "stability-ai__stable-diffusion-img2img").symlink_to(sd_dir)
    with app_client(settings, weights_dir=weights) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        assert predict(client, auth, SD_REF, FAST_SD_INPUT)["status"] == "succeeded"
        assert predict(client, auth, IMG2IMG_REF, fast_input())["status"] == "succeeded"
        provider = client.app.state.container.provider  # type: ignore[attr-defined]
        sd = provider.runner(stable_diffusion.MODEL).pipeline()
        img2img = provider.runner(stable_diffusion_img2img.MODEL).pipeline()
        assert type(img2img).__name__ == "StableDiffusionImg2ImgPipeline"
        assert img2img.unet is sd.unet
        assert img2img.vae is sd.vae

"""stability-ai/sdxl over the HTTP API on the tiny random weights: every mode and
scheduler, refiners, watermark, mask semantics, sizes, trained weights (and that they do
not leak into the next prediction), and sizes refused at create."""

from __future__ import annotations

import base64
import io
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from repligate.runners.safety import NSFW_ERROR
from repligate.settings import Settings
from repligate.testing import tiny_safety
from repligate.testing.tiny_sdxl import build_sdxl_trainer_tar
from tests.api_helpers import app_client, assert_problem, finished, image
from tests.conftest import make_token
from tests.sd_family import weights_with_checker

SDXL_VERSION = "7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc"
SDXL_REF = f"stability-ai/sdxl:{SDXL_VERSION}"
FAST: dict[str, Any] = {
    "prompt": "a red fox",
    "width": 64,
    "height": 64,
    "num_inference_steps": 2,
    "seed": 7,
    "apply_watermark": False,
}
SCHEDULERS = [
    "DDIM",
    "DPMSolverMultistep",
    "HeunDiscrete",
    "KarrasDPM",
    "K_EULER_ANCESTRAL",
    "K_EULER",
    "PNDM",
]


def predict(client: TestClient, auth: dict[str, str], **changes: Any) -> dict[str, Any]:
    response = client.post(
        "/replicate/v1/predictions",
        json={"version": SDXL_REF, "input": {**FAST, **changes}},
        headers=auth,
    )
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    if body["status"] not in ("succeeded", "failed", "canceled"):
        body = finished(client, body["urls"]["get"], auth)
    return body


def pixels(client: TestClient, auth: dict[str, str], **changes: Any) -> list[np.ndarray]:
    body = predict(client, auth, **changes)
    assert body["status"] == "succeeded", body["error"]
    return [np.asarray(image(client, url), dtype=np.int16) for url in body["output"]]


def data_uri(data: bytes, content_type: str) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


def png_uri(picture: Image.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return data_uri(buffer.getvalue(), "image/png")


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def mask_uri(width: int, height: int, value: int) -> str:
    return png_uri(Image.new("RGB", (width, height), (value, value, value)))


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_txt2img_runs_every_scheduler_at_the_asked_size(
    client: TestClient, auth: dict[str, str], scheduler: str
) -> None:
    body = predict(client, auth, scheduler=scheduler, width=64, height=48)
    assert body["status"] == "succeeded", body["error"]
    assert "Using seed: 7" in body["logs"]
    assert "txt2img mode" in body["logs"]
    assert len(body["output"]) == 1 and body["output"][0].endswith("out-0.png")
    assert image(client, body["output"][0]).size == (64, 48)


def test_num_outputs_gives_that_many_different_images(
    client: TestClient, auth: dict[str, str]
) -> None:
    first, second = pixels(client, auth, num_outputs=2)
    assert first.shape == second.shape == (64, 64, 3)
    assert np.abs(first - second).mean() > 1


def test_a_scheduler_choice_does_not_carry_over_to_the_next_prediction(
    client: TestClient, auth: dict[str, str]
) -> None:
    (before,) = pixels(client, auth, scheduler="DPMSolverMultistep")
    (karras,) = pixels(client, auth, scheduler="KarrasDPM")
    (after,) = pixels(client, auth, scheduler="DPMSolverMultistep")
    assert np.abs(karras - before).mean() > 0
    assert np.array_equal(before, after)


def test_img2img_keeps_the_input_size_floored_to_8_and_ignores_width(
    client: TestClient, auth: dict[str, str]
) -> None:
    source = png_uri(noise_image(100, 77))
    body = predict(client, auth, image=source, width=63, height=64, prompt_strength=0.5)
    assert body["status"] == "succeeded", body["error"]
    assert "img2img mode" in body["logs"]
    assert image(client, body["output"][0]).size == (96, 72)


def test_inpainting_resizes_to_width_and_height(client: TestClient, auth: dict[str, str]) -> None:
    body = predict(
        client, auth, image=png_uri(noise_image(80, 80)), mask=mask_uri(80, 80, 255), height=48
    )
    assert body["status"] == "succeeded", body["error"]
    assert "inpainting mode" in body["logs"]
    assert image(client, body["output"][0]).size == (64, 48)


def test_white_mask_repaints_and_black_mask_keeps_the_image(
    client: TestClient, auth: dict[str, str]
) -> None:
    source = png_uri(noise_image(64, 64, seed=3))

    def inpaint(mask_value: int, guidance: float) -> np.ndarray:
        mask = mask_uri(64, 64, mask_value)
        (result,) = pixels(client, auth, image=source, mask=mask, guidance_scale=guidance)
        return result

    # Where the mask is black the latents are the image's at every step: what the model
    # would paint (here: changed by the guidance scale) never reaches the output.
    assert np.array_equal(inpaint(0, 1.0), inpaint(0, 20.0))
    assert np.abs(inpaint(255, 1.0) - inpaint(255, 20.0)).mean() > 0.5


def test_a_mask_without_an_image_is_ignored(client: TestClient, auth: dict[str, str]) -> None:
    body = predict(client, auth, mask=mask_uri(64, 64, 255))
    assert body["status"] == "succeeded", body["error"]
    assert "txt2img mode" in body["logs"]
    (plain,) = pixels(client, auth)
    assert np.array_equal(np.asarray(image(client, body["output"][0]), dtype=np.int16), plain)


@pytest.mark.parametrize("refine", ["expert_ensemble_refiner", "base_image_refiner"])
def test_refiners_run_and_change_the_image(
    client: TestClient, auth: dict[str, str], refine: str
) -> None:
    (plain,) = pixels(client, auth, num_inference_steps=4)
    body = predict(
        client, auth, num_inference_steps=4, refine=refine, refine_steps=8, high_noise_frac=0.5
    )
    assert body["status"] == "succeeded", body["error"]
    refined = np.asarray(image(client, body["output"][0]), dtype=np.int16)
    assert refined.shape == plain.shape
    assert np.abs(refined - plain).mean() > 0.5


def _diffusers_reference(weights: Path, seed: int, size: int) -> np.ndarray:
    """What diffusers itself makes from the same weights, seed and arguments."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(weights, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    result = pipe(
        prompt=["a red fox"],
        negative_prompt=[""],
        width=size,
        height=size,
        num_inference_steps=2,
        guidance_scale=7.5,
        generator=torch.Generator("cpu").manual_seed(seed),
    )
    return np.asarray(result.images[0], dtype=np.int16)


def test_watermark_changes_pixels_and_false_turns_it_off(
    client: TestClient, auth: dict[str, str], tiny_weights: Path
) -> None:
    from imwatermark import WatermarkDecoder

    (unmarked,) = pixels(client, auth, width=256, height=256, apply_watermark=False)
    (marked,) = pixels(client, auth, width=256, height=256, apply_watermark=True)
    reference = _diffusers_reference(tiny_weights / "stability-ai__sdxl", seed=7, size=256)
    assert np.array_equal(unmarked, reference)
    assert np.abs(marked - unmarked).mean() > 0.1
    # The watermark is SDXL's: its 48 bits decode back from the output.
    from diffusers.pipelines.stable_diffusion_xl.watermark import WATERMARK_BITS

    bgr = marked.astype(np.uint8)[:, :, ::-1]
    decoded = WatermarkDecoder("bits", len(WATERMARK_BITS)).decode(bgr, "dwtDct")
    matching = sum(int(a) == b for a, b in zip(decoded, WATERMARK_BITS, strict=True))
    assert matching >= 40


def test_images_narrower_than_256_are_not_watermarked(
    client: TestClient, auth: dict[str, str]
) -> None:
    (marked,) = pixels(client, auth, apply_watermark=True)
    (unmarked,) = pixels(client, auth, apply_watermark=False)
    assert np.array_equal(marked, unmarked)


@pytest.mark.parametrize("kind", ["lora", "unet"])
def test_trained_weights_change_the_output_and_do_not_leak(
    client: TestClient, auth: dict[str, str], tmp_path: Path, kind: str
) -> None:
    tarball = build_sdxl_trainer_tar(tmp_path / "trained.tar", kind=kind)
    weights = data_uri(tarball.read_bytes(), "application/x-tar")
    prompt = "a photo of TOK"
    (before,) = pixels(client, auth, prompt=prompt)
    body = predict(client, auth, prompt=prompt, replicate_weights=weights)
    assert body["status"] == "succeeded", body["error"]
    assert "Prompt: a photo of <s0><s1>" in body["logs"]
    trained = np.asarray(image(client, body["output"][0]), dtype=np.int16)
    assert np.abs(trained - before).mean() > 1
    (after,) = pixels(client, auth, prompt=prompt)
    assert np.array_equal(before, after)
    # A second use comes from the disk cache and gives the same image.
    (again,) = pixels(client, auth, prompt=prompt, replicate_weights=weights)
    assert np.array_equal(again, trained)


def test_lora_scale_weighs_the_lora(
    client: TestClient, auth: dict[str, str], tmp_path: Path
) -> None:
    tarball = build_sdxl_trainer_tar(tmp_path / "trained.tar", kind="lora")
    weights = data_uri(tarball.read_bytes(), "application/x-tar")
    (off,) = pixels(client, auth, replicate_weights=weights, lora_scale=0.0)
    (on,) = pixels(client, auth, replicate_weights=weights, lora_scale=1.0)
    (plain,) = pixels(client, auth)
    # The prompt has no trained token, so at scale 0 nothing trained is left.
    assert np.array_equal(off, plain)
    assert np.abs(on - plain).mean() > 1


def test_a_bad_trained_weights_tarball_fails_the_prediction(
    client: TestClient, auth: dict[str, str]
) -> None:
    body = predict(client, auth, replicate_weights=data_uri(b"not a tarball", "text/plain"))
    assert body["status"] == "failed"
    assert "replicate_weights" in body["error"]
    # The server is fine afterwards.
    assert predict(client, auth)["status"] == "succeeded"


@pytest.mark.parametrize(("width", "height"), [(63, 64), (64, 100), (0, 64)])
def test_sizes_that_are_not_multiples_of_8_are_refused_at_create(
    client: TestClient, auth: dict[str, str], width: int, height: int
) -> None:
    response = client.post(
        "/replicate/v1/predictions",
        json={"version": SDXL_REF, "input": {**FAST, "width": width, "height": height}},
        headers=auth,
    )
    body = assert_problem(response, 422)
    fields = {f["field"] for f in body["invalid_fields"]}
    sizes = {"width": width, "height": height}
    assert fields == {f"input.{name}" for name, v in sizes.items() if v <= 0 or v % 8}


def test_a_tarball_reaching_outside_its_folder_is_refused(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        payload = b"escaped"
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    body = predict(client, auth, replicate_weights=data_uri(buffer.getvalue(), "x/tar"))
    assert body["status"] == "failed"
    assert "replicate_weights" in body["error"]
    assert not list(settings.data_dir.rglob("escaped.txt"))
    assert not list(settings.data_dir.parent.glob("escaped.txt"))


def test_the_trained_weights_cache_keeps_to_its_size_cap(
    settings: Settings, tmp_path: Path
) -> None:
    first = build_sdxl_trainer_tar(tmp_path / "first.tar", kind="lora", seed=1)
    second = build_sdxl_trainer_tar(tmp_path / "second.tar", kind="lora", seed=2)
    cache = settings.data_dir / "trained-weights"
    # A cap smaller than one tarball: only the one in use stays.
    with app_client(settings, trained_weights_cache_bytes=1) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        for tarball in (first, second):
            weights = data_uri(tarball.read_bytes(), "application/x-tar")
            assert predict(client, auth, replicate_weights=weights)["status"] == "succeeded"
            kept = [entry for entry in cache.iterdir() if entry.is_dir()]
            assert len(kept) == 1
            assert sorted(p.name for p in kept[0].iterdir()) == [
                "embeddings.pti",
                "lora.safetensors",
                "special_params.json",
            ]


def test_flagged_images_fail_the_prediction_unless_the_checker_is_disabled(
    settings: Settings, tiny_weights: Path, tmp_path: Path
) -> None:
    tiny_safety.safety_checker(tmp_path / "checker", flag=True)
    weights = weights_with_checker(tmp_path / "weights", tiny_weights, tmp_path / "checker")
    with app_client(settings, weights_dir=weights) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        flagged = predict(client, auth, num_outputs=2)
        bypassed = predict(client, auth, num_outputs=2, disable_safety_checker=True)
    assert flagged["status"] == "failed"
    assert flagged["error"] == NSFW_ERROR
    assert "NSFW content detected in image 1" in flagged["logs"]
    assert bypassed["status"] == "succeeded"
    assert [url.rsplit("/", 1)[-1] for url in bypassed["output"]] == ["out-0.png", "out-1.png"]

"""Helpers for the Stable Diffusion family's API tests: versions, images sent as data
URIs, a prediction run to its end, and weights dirs with a safety checker of our choice."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from repligate.runners.safety import LOCAL_DIR_NAME
from tests.api_helpers import finished
from tests.api_helpers import image as fetch_image

INPAINT_REF = (
    "stability-ai/stable-diffusion-inpainting:"
    "95b7223104132402a9ae91cc677285bc5eb997834bd2349fa486f53910fd68b3"
)
IMG2IMG_REF = (
    "stability-ai/stable-diffusion-img2img:"
    "15a3689ee13b0d2616e98820eca31d4c3abcd36672df6afce5cb6feb1d66087d"
)
SCHEDULERS = ["DDIM", "K_EULER", "DPMSolverMultistep", "K_EULER_ANCESTRAL", "PNDM", "KLMS"]


def data_uri(picture: Image.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def half_mask(width: int, height: int) -> Image.Image:
    """Left half black (kept), right half white (repainted)."""
    pixels = np.zeros((height, width), dtype=np.uint8)
    pixels[:, width // 2 :] = 255
    return Image.fromarray(pixels, mode="L")


def predict(
    client: TestClient, auth: dict[str, str], version: str, inputs: dict[str, Any]
) -> dict[str, Any]:
    """Create a prediction and return it once it has finished."""
    response = client.post(
        "/replicate/v1/predictions", json={"version": version, "input": inputs}, headers=auth
    )
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    if body["status"] not in ("succeeded", "failed", "canceled"):
        body = finished(client, body["urls"]["get"], auth)
    return body


def output_images(client: TestClient, body: dict[str, Any]) -> list[Image.Image]:
    assert body["status"] == "succeeded", body.get("error")
    return [fetch_image(client, url) for url in body["output"]]


def output_names(body: dict[str, Any]) -> list[str]:
    return [url.rsplit("/", 1)[-1] for url in body["output"]]


def weights_with_checker(root: Path, tiny_weights: Path, checker: Path | None) -> Path:
    """A weights dir that links every tiny model of ``tiny_weights`` and uses ``checker``
    as its safety checker (none at all when ``checker`` is None)."""
    root.mkdir(parents=True, exist_ok=True)
    for entry in tiny_weights.iterdir():
        if entry.is_dir() and entry.name != LOCAL_DIR_NAME:
            (root / entry.name).symlink_to(entry, target_is_directory=True)
    if checker is not None:
        (root / LOCAL_DIR_NAME).symlink_to(checker, target_is_directory=True)
    return root

"""cjwbw/rembg through the HTTP API, on the tiny ONNX U²-Net (testing/tiny_rembg.py).

The expected mask is computed here from the model file with onnxruntime and the steps the
original's rembg takes (320x320 LANCZOS, divide by the maximum, ImageNet normalisation,
output 0 channel 0, min-max, 8 bits, LANCZOS back): the output's alpha must be it.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import replicate
from fastapi.testclient import TestClient
from PIL import Image

from repligate.app import create_app
from repligate.models import rembg
from repligate.settings import Settings
from repligate.testing import tiny_rembg
from repligate.testing.live_server import LiveServer
from tests.api_helpers import app_client, assert_problem
from tests.api_helpers import image as fetch_image
from tests.conftest import make_token
from tests.fetch_server import EXIF_JPEG, LOOPBACK, local_server
from tests.sd_family import data_uri, noise_image, predict

REF = f"cjwbw/rembg:{rembg.MODEL.version}"
LANCZOS = Image.Resampling.LANCZOS


def expected_alpha(picture: Image.Image, model: Path) -> np.ndarray:
    import onnxruntime as ort

    small = np.asarray(picture.convert("RGB").resize((320, 320), LANCZOS), dtype=np.float64)
    small = small / max(small.max(), 1e-6)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    batch = ((small - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    mask = session.run(None, {tiny_rembg.INPUT_NAME: batch})[0][0, 0]
    mask = (mask - mask.min()) / (mask.max() - mask.min())
    alpha = Image.fromarray((mask * 255).astype(np.uint8), mode="L").resize(picture.size, LANCZOS)
    return np.asarray(alpha, dtype=np.int16)


def succeeded_output(client: TestClient, body: dict[str, Any]) -> Image.Image:
    assert body["status"] == "succeeded", body["error"]
    # One URL, not a list, named as the original names its file.
    assert isinstance(body["output"], str) and body["output"].endswith("/out.png")
    picture = fetch_image(client, body["output"])
    assert picture.format == "PNG"
    return picture


def test_the_output_is_an_rgba_png_of_the_input_size_whose_alpha_is_the_models_mask(
    client: TestClient, auth: dict[str, str], tiny_weights: Path
) -> None:
    picture = noise_image(45, 30, seed=3)
    body = predict(client, auth, REF, {"image": data_uri(picture)})
    out = succeeded_output(client, body)
    assert out.mode == "RGBA" and out.size == (45, 30)
    pixels = np.asarray(out, dtype=np.int16)
    alpha = expected_alpha(picture, tiny_weights / "cjwbw__rembg" / tiny_rembg.FILE_NAME)
    assert alpha.std() > 10  # the mask follows the image: a real test of where it came from
    assert np.abs(pixels[..., 3] - alpha).max() <= 1
    # Colours are the input composited over transparent black by that alpha.
    premultiplied = np.asarray(picture, dtype=np.float64) * pixels[..., 3:] / 255
    assert np.abs(pixels[..., :3] - premultiplied).max() <= 1
    assert "tiny random weights" in body["logs"]


def test_the_same_image_gives_the_same_cutout_and_another_image_another(
    client: TestClient, auth: dict[str, str]
) -> None:
    first = succeeded_output(
        client, predict(client, auth, REF, {"image": data_uri(noise_image(32, 32, 1))})
    )
    again = succeeded_output(
        client, predict(client, auth, REF, {"image": data_uri(noise_image(32, 32, 1))})
    )
    other = succeeded_output(
        client, predict(client, auth, REF, {"image": data_uri(noise_image(32, 32, 2))})
    )
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first)[..., 3], np.asarray(other)[..., 3])


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    with local_server() as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def url_client(settings: Settings) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """A server that may fetch from the loopback image server (and nothing else private)."""
    with app_client(settings, fetch_allowed_networks=LOOPBACK) as client:
        yield client, {"Authorization": f"Bearer {make_token(client)}"}


def test_an_image_by_url_keeps_its_stored_orientation_as_the_original_did(
    url_client: tuple[TestClient, dict[str, str]], image_server: str
) -> None:
    # 40x20 stored, tagged "rotate 90°": the original's rembg ignored the tag.
    client, auth = url_client
    out = succeeded_output(
        client, predict(client, auth, REF, {"image": f"{image_server}/exif.jpg"})
    )
    assert out.size == (40, 20)
    stored = Image.open(io.BytesIO(EXIF_JPEG))
    assert stored.getexif()[0x0112] == 6 and stored.size == (40, 20)


@pytest.mark.parametrize(
    ("image_format", "mode", "options"),
    [("WEBP", "L", {"lossless": True}), ("GIF", "P", {}), ("TIFF", "CMYK", {})],
)
def test_images_of_other_formats_and_modes_come_back_as_rgba_png(
    client: TestClient, auth: dict[str, str], image_format: str, mode: str, options: dict[str, Any]
) -> None:
    buffer = io.BytesIO()
    noise_image(20, 12).convert(mode).save(buffer, format=image_format, **options)
    media = f"image/{image_format.lower()}"
    uri = f"data:{media};base64," + base64.b64encode(buffer.getvalue()).decode()
    out = succeeded_output(client, predict(client, auth, REF, {"image": uri}))
    assert out.mode == "RGBA" and out.size == (20, 12)


def _truncated_png() -> str:
    buffer = io.BytesIO()
    noise_image(40, 40).save(buffer, format="PNG")  # within the tests' pixel limit
    cut = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    return "data:image/png;base64," + base64.b64encode(cut).decode()


@pytest.mark.parametrize(
    ("image", "error"),
    [
        (
            "data:text/plain;base64," + base64.b64encode(b"just some words").decode(),
            "image: the file is not an image this server can read (it looks like text/plain)",
        ),
        (_truncated_png(), "image: the file is not an image this server can read"),
        (
            data_uri(noise_image(50, 40)),
            "image: the image is 50x40, more than the limit of 1999 pixels "
            "(REPLIGATE_MAX_IMAGE_PIXELS)",
        ),
    ],
    ids=["not-an-image", "truncated", "too-many-pixels"],
)
def test_bad_images_fail_saying_what_is_wrong(settings: Settings, image: str, error: str) -> None:
    with app_client(settings, max_image_pixels=1999) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        body = predict(client, auth, REF, {"image": image})
    assert body["status"] == "failed"
    assert body["error"].startswith(error), body["error"]
    assert body["output"] is None


def test_a_decompression_bomb_and_a_file_over_the_byte_limit_by_url_are_refused(
    settings: Settings, image_server: str
) -> None:
    with app_client(settings, fetch_allowed_networks=LOOPBACK, fetch_max_bytes=200_000) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        bomb = predict(client, auth, REF, {"image": f"{image_server}/bomb.png"})
        huge = predict(client, auth, REF, {"image": f"{image_server}/huge"})
    assert bomb["status"] == "failed"
    # Pillow refuses it at open, before its size is read: reported by its pixel count.
    assert bomb["error"] == (
        "image: the image is 400000000 pixels, more than the limit of 64000000 pixels "
        "(REPLIGATE_MAX_IMAGE_PIXELS)"
    )
    assert huge["status"] == "failed"
    assert huge["error"] == "image: the file is larger than 200000 bytes"


def test_an_uploaded_file_is_used_and_one_over_the_byte_limit_is_refused(
    settings: Settings,
) -> None:
    small, large = io.BytesIO(), io.BytesIO()
    noise_image(21, 13).save(small, format="PNG")
    noise_image(120, 100).save(large, format="PNG")
    assert len(small.getvalue()) < 20_000 < len(large.getvalue())
    with app_client(settings, fetch_max_bytes=20_000) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        urls = []
        for buffer in (small, large):
            response = client.post(
                "/v1/files",
                files={"content": ("in.png", buffer.getvalue(), "image/png")},
                headers=auth,
            )
            assert response.status_code == 201, response.text
            urls.append(response.json()["urls"]["get"])
        used = predict(client, auth, REF, {"image": urls[0]})
        assert succeeded_output(client, used).size == (21, 13)
        refused = predict(client, auth, REF, {"image": urls[1]})
    assert refused["status"] == "failed"
    assert refused["error"] == (
        f"image: the file is {len(large.getvalue())} bytes, more than 20000"
    )


@pytest.mark.parametrize("sent", [{}, {"image": ""}], ids=["missing", "empty"])
def test_an_image_is_required_at_create(
    client: TestClient, auth: dict[str, str], sent: dict[str, str]
) -> None:
    response = client.post("/v1/predictions", json={"version": REF, "input": sent}, headers=auth)
    problem = assert_problem(response, 422)
    assert problem["invalid_fields"] == [
        {"type": "required", "field": "input", "description": "image is required"}
    ]
    assert client.get("/v1/predictions", headers=auth).json()["results"] == []


@pytest.mark.parametrize("ref", ["cjwbw/rembg", REF], ids=["model-name", "version"])
def test_the_official_client_runs_it_with_an_open_file(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ref: str
) -> None:
    monkeypatch.setenv("REPLICATE_POLL_INTERVAL", "0.05")
    path = tmp_path / "photo.png"
    noise_image(37, 23, seed=5).save(path)
    with LiveServer(create_app(settings)) as server:
        token = server.make_token()
        client = replicate.Client(api_token=token, base_url=server.url)
        with path.open("rb") as handle:
            output = client.run(ref, input={"image": handle})
        # One URL (1.0.7 leaves http: URLs as strings), as Replicate's rembg returns.
        assert isinstance(output, str) and output.endswith("/out.png")
        response = httpx.get(output, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        [uploaded] = client.files.list()
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(response.content)) as out:
        assert (out.format, out.mode, out.size) == ("PNG", "RGBA", (37, 23))
    assert uploaded.name == "photo.png"

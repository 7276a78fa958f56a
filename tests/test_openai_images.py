"""The official ``openai`` client (3.57.0), unchanged, against a live repligate server:
``images.generate`` and ``images.edit`` on tiny random weights, their errors in OpenAI's
shape, and the predictions they make as seen through Replicate's routes."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai.types import Image as OpenAIImage
from openai.types import ImagesResponse
from PIL import Image

from repligate.app import create_app
from repligate.models import all_models
from repligate.openai_images import ImageRequestError, generation_input, nearest_aspect_ratio
from repligate.registry import Registry
from repligate.runners.flux import ASPECT_RATIOS as FLUX_ASPECT_RATIOS
from repligate.settings import Settings
from repligate.testing.fakes import ScriptedProvider
from repligate.testing.live_server import LiveServer
from tests.fake_app import fake_app
from tests.webhook_receiver import webhook_receiver

FAST = {"num_inference_steps": 2, "scheduler": "K_EULER", "seed": 11}
SDXL_FAST = {"num_inference_steps": 2, "seed": 7, "apply_watermark": False}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> Iterator[LiveServer]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("openai-data"),
        weights_dir=tiny_weights,
        log_flush_interval=0.0,
        public_base_url=None,
        concurrency_per_device=1,
        openai_model_aliases={"dall-e-2": "stability-ai/stable-diffusion"},
        webhook_allowed_networks=["127.0.0.0/8"],
    )
    with LiveServer(create_app(settings)) as server:
        yield server


@pytest.fixture
def token(live: LiveServer) -> str:
    return live.make_token()  # a key per test: listings are per key


def client_for(live: LiveServer, token: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=token, base_url=f"{live.url}/v1", max_retries=0, timeout=120)


def images_of(result: ImagesResponse) -> list[OpenAIImage]:
    assert result.data is not None
    return result.data


def png(data: bytes) -> Image.Image:
    assert data.startswith(PNG_MAGIC)
    picture = Image.open(io.BytesIO(data))
    picture.load()
    return picture


def fetch(url: str, token: str) -> Image.Image:
    response = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code == 200, response.text
    return png(response.content)


def replicate_list(live: LiveServer, token: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{live.url}/v1/predictions", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert response.status_code == 200
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def png_bytes(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def test_generate_urls_of_the_asked_size_listed_as_a_prediction(
    live: LiveServer, token: str
) -> None:
    client = client_for(live, token)
    result = client.images.generate(
        model="stability-ai/stable-diffusion",
        prompt="a red fox",
        n=2,
        size="128x64",
        extra_body=FAST,
    )
    assert result.created > 0 and len(images_of(result)) == 2
    for item in images_of(result):
        assert item.url is not None and item.b64_json is None
        assert fetch(item.url, token).size == (128, 64)
    assert result.usage is not None
    extra = result.usage.model_extra or {}
    assert extra["image_count"] == 2 and extra["pixel_steps"] == 2 * 128 * 64 * 2
    # The same call is a Replicate prediction: listed, with the mapped input, its web
    # page answering.
    (prediction,) = replicate_list(live, token)
    assert prediction["status"] == "succeeded"
    assert prediction["model"] == "stability-ai/stable-diffusion"
    assert prediction["input"] == {
        "prompt": "a red fox",
        "width": 128,
        "height": 64,
        "num_outputs": 2,
        **FAST,
    }
    assert [d["url"] for d in prediction["data"]] == [d.url for d in images_of(result)]
    assert httpx.get(prediction["urls"]["web"], timeout=30).status_code == 200


def test_b64_json_is_the_same_png_the_url_serves(live: LiveServer, token: str) -> None:
    client = client_for(live, token)
    result = client.images.generate(
        model="dall-e-2",  # the operator's alias
        prompt="a red fox",
        size="64x64",
        response_format="b64_json",
        extra_body=FAST,
    )
    (item,) = images_of(result)
    assert item.url is None and item.b64_json is not None
    decoded = png(base64.b64decode(item.b64_json))
    assert decoded.size == (64, 64)
    (prediction,) = replicate_list(live, token)
    assert prediction["model"] == "stability-ai/stable-diffusion"
    served = fetch(prediction["output"][0], token)
    assert np.array_equal(np.asarray(served), np.asarray(decoded))


def test_the_default_model_runs_when_none_is_named(live: LiveServer, token: str) -> None:
    response = httpx.post(
        f"{live.url}/v1/images/generations",
        json={"prompt": "a fox", "size": "64x64", **FAST},
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-prediction-id"] == replicate_list(live, token)[0]["id"]


def test_a_webhook_in_the_body_fires_for_the_prediction(live: LiveServer, token: str) -> None:
    client = client_for(live, token)
    with webhook_receiver() as receiver:
        client.images.generate(
            model="stability-ai/stable-diffusion",
            prompt="a fox",
            size="64x64",
            extra_body={**FAST, "webhook": receiver.url, "webhook_events_filter": ["completed"]},
        )
        for _ in range(600):  # delivered by the webhook threads: wait for it, not a time
            if receiver.received:
                break
            time.sleep(0.05)
        (delivery,) = receiver.received
    assert delivery.json()["status"] == "succeeded"
    assert delivery.json()["id"] == replicate_list(live, token)[0]["id"]


def _rgba(width: int, height: int, transparent_right: bool) -> Image.Image:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    if transparent_right:
        pixels[:, width // 2 :, 3] = 0
    return Image.fromarray(pixels, mode="RGBA")


def test_edit_sends_the_mask_in_replicates_convention(live: LiveServer, token: str) -> None:
    client = client_for(live, token)
    image = _rgba(64, 64, transparent_right=False)
    mask = _rgba(64, 64, transparent_right=True)  # OpenAI: transparent = edit
    result = client.images.edit(
        model="stability-ai/stable-diffusion-inpainting",
        image=("image.png", png_bytes(image), "image/png"),
        mask=("mask.png", png_bytes(mask), "image/png"),
        prompt="a cat",
        extra_body=FAST,
    )
    (item,) = images_of(result)
    assert item.url is not None and fetch(item.url, token).size == (64, 64)
    (prediction,) = replicate_list(live, token)
    assert prediction["model"] == "stability-ai/stable-diffusion-inpainting"
    assert prediction["input"]["num_inference_steps"] == 2  # a form field, made an integer
    sent = prediction["input"]["mask"]
    assert sent.startswith("data:image/png;base64,")
    replicate_mask = np.asarray(png(base64.b64decode(sent.split(",", 1)[1])))
    # Replicate: white = repaint. The transparent right half is white, the rest black.
    assert (replicate_mask[:, 32:] == 255).all() and (replicate_mask[:, :32] == 0).all()


def test_sdxl_edits_only_where_the_openai_mask_is_transparent(live: LiveServer, token: str) -> None:
    """SDXL in inpaint mode keeps the image's latents where Replicate's mask is black, so a
    fully opaque OpenAI mask (edit nothing) makes the guidance scale change nothing, and a
    transparent one lets it change the image."""
    client = client_for(live, token)
    image = png_bytes(_rgba(64, 64, transparent_right=False))

    def edit(mask: Image.Image, guidance: float) -> np.ndarray:
        result = client.images.edit(
            model="stability-ai/sdxl",
            image=("image.png", image, "image/png"),
            mask=("mask.png", png_bytes(mask), "image/png"),
            prompt="a cat",
            response_format="b64_json",
            extra_body={**SDXL_FAST, "guidance_scale": guidance},
        )
        (item,) = images_of(result)
        assert item.b64_json is not None
        return np.asarray(png(base64.b64decode(item.b64_json)), dtype=np.int16)

    keep_all = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    edit_all = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    assert np.array_equal(edit(keep_all, 1.0), edit(keep_all, 20.0))
    assert np.abs(edit(edit_all, 1.0) - edit(edit_all, 20.0)).mean() > 0.5


def _error(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.response.json()
    assert set(body) == {"error"} and {"message", "type", "code"} <= set(body["error"])
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize(
    ("changes", "status", "param"),
    [
        ({"model": "nobody/nothing"}, 404, "model"),
        ({"model": "cjwbw/rembg"}, 400, "model"),  # not text-to-image
        ({"model": "stability-ai/stable-diffusion-img2img"}, 400, "model"),
        ({"size": "big"}, 400, "size"),
        ({"size": "100x64"}, 400, "size"),  # the model's widths are multiples of 64
        ({"n": 9}, 400, "n"),
        ({"response_format": "png"}, 400, "response_format"),
        ({"extra_body": {"no_such_input": 1}}, 400, None),
    ],
)
def test_errors_come_back_in_openais_shape(
    live: LiveServer, token: str, changes: dict[str, Any], status: int, param: str | None
) -> None:
    request: dict[str, Any] = {
        "model": "stability-ai/stable-diffusion",
        "prompt": "a fox",
        "size": "64x64",
        **changes,
    }
    with pytest.raises(openai.APIStatusError) as raised:
        client_for(live, token).images.generate(**request)
    assert raised.value.status_code == status
    error = _error(raised.value)
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param
    assert replicate_list(live, token) == []  # nothing was created


def test_a_bad_key_is_a_401_in_openais_shape(live: LiveServer) -> None:
    with pytest.raises(openai.AuthenticationError) as raised:
        client_for(live, "r8_not_a_key").images.generate(prompt="a fox")
    assert _error(raised.value)["code"] == "invalid_api_key"


def test_a_failed_prediction_is_a_500_with_its_message(tmp_path: Path) -> None:
    # A weights folder that holds no pipeline: the prediction is created, then fails.
    broken = tmp_path / "weights"
    (broken / "stability-ai__stable-diffusion").mkdir(parents=True)
    settings = Settings(data_dir=tmp_path / "data", weights_dir=broken, log_flush_interval=0.0)
    with LiveServer(create_app(settings)) as server:
        token = server.make_token()
        with pytest.raises(openai.InternalServerError) as raised:
            client_for(server, token).images.generate(prompt="a fox", size="64x64")
        error = _error(raised.value)
        (prediction,) = replicate_list(server, token)
    assert error["code"] == "prediction_failed" and error["type"] == "server_error"
    assert prediction["status"] == "failed"
    assert "weights of stability-ai/stable-diffusion are not available" in prediction["error"]
    assert prediction["id"] in error["message"] and prediction["error"] in error["message"]


def test_a_prediction_still_running_when_the_wait_ends_is_a_504_naming_it(
    tmp_path: Path,
) -> None:
    # The queue never runs it (the test drives it, and does not): the wait runs out.
    settings = Settings(data_dir=tmp_path / "data", openai_wait_seconds=1)
    with fake_app(settings, ScriptedProvider()) as app:
        client = openai.OpenAI(
            api_key=app.auth["Authorization"].split()[1],
            base_url="http://testserver/v1",
            http_client=app.client,
            max_retries=0,
        )
        with pytest.raises(openai.APIStatusError) as raised:
            client.images.generate(prompt="a fox", size="64x64")
        assert raised.value.status_code == 504
        error = _error(raised.value)
        listed = app.client.get("/v1/predictions", headers=app.auth).json()["results"]
    (prediction,) = listed
    assert prediction["status"] == "starting"
    assert error["code"] == "timeout" and prediction["id"] in error["message"]


def test_an_edit_without_transparency_or_mask_is_refused(live: LiveServer, token: str) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client_for(live, token).images.edit(
            image=("image.png", png_bytes(Image.new("RGB", (64, 64))), "image/png"),
            prompt="a cat",
        )
    assert _error(raised.value)["param"] == "image"


# -- the mapping alone ---------------------------------------------------------------------

REGISTRY = Registry(all_models())


def test_flux_runs_at_the_nearest_aspect_ratio(live: LiveServer, token: str) -> None:
    client = client_for(live, token)
    result = client.images.generate(
        model="lucataco/flux-schnell-lora",
        prompt="a red fox",
        size="1792x1024",
        response_format="b64_json",
        extra_body={"num_inference_steps": 1, "output_format": "png", "seed": 3},
    )
    (item,) = images_of(result)
    assert item.b64_json is not None
    # 1792x1024 is 7:4; the nearest of Flux's ratios is 16:9, which it runs at 1344x768.
    assert png(base64.b64decode(item.b64_json)).size == FLUX_ASPECT_RATIOS["16:9"]
    (prediction,) = replicate_list(live, token)
    assert prediction["input"]["aspect_ratio"] == "16:9"


def test_flux_gets_the_nearest_aspect_ratio() -> None:
    flux = REGISTRY.model("lucataco", "flux-schnell-lora")
    mapped = generation_input(flux, "a fox", 3, "1792x1024", {"num_inference_steps": 2})
    assert mapped == {
        "prompt": "a fox",
        "aspect_ratio": "16:9",
        "num_outputs": 3,
        "num_inference_steps": 2,
    }
    assert nearest_aspect_ratio(1024, 1024, ["16:9", "1:1", "9:16"]) == "1:1"
    assert nearest_aspect_ratio(1000, 1600, ["16:9", "1:1", "9:16", "2:3"]) == "2:3"


def test_openai_only_options_are_dropped_unless_the_model_has_them() -> None:
    sd = REGISTRY.model("stability-ai", "stable-diffusion")
    mapped = generation_input(sd, "a fox", None, None, {"quality": "hd", "style": "vivid"})
    assert mapped == {"prompt": "a fox"}
    with pytest.raises(ImageRequestError):
        generation_input(sd, "", None, None, {})


def test_stream_is_refused_rather_than_answered_as_json() -> None:
    sd = REGISTRY.model("stability-ai", "stable-diffusion")
    with pytest.raises(ImageRequestError) as raised:
        generation_input(sd, "a fox", None, None, {"stream": True})
    assert raised.value.param == "stream"

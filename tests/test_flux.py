"""lucataco/flux-schnell-lora and lucataco/flux-dev-lora over the HTTP API on the tiny
random weights: aspect ratios, batching, seeds, img2img, output formats, the safety
checker, and hf_lora in its forms (from a loopback server the tests allow), isolated
between predictions.

Every Flux output is about a megapixel (the aspect-ratio table), so the predictions run
one denoising step unless more are needed."""

from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from repligate.app import create_app
from repligate.runners.flux import ASPECT_RATIOS
from repligate.runners.flux_lora import LoraError, parse
from repligate.runners.safety import NSFW_ERROR
from repligate.settings import Settings
from repligate.testing import tiny_flux, tiny_safety
from repligate.testing.file_server import HUB_REVISION, FileServer
from repligate.testing.live_server import LiveServer
from tests.api_helpers import app_client, assert_problem, download, finished
from tests.conftest import make_token
from tests.sd_family import data_uri, noise_image, weights_with_checker

SCHNELL = (
    "lucataco/flux-schnell-lora:2a6b576af31790b470f0a8442e1e9791213fa13799cbb65a9fc1436e96389574"
)
DEV = "lucataco/flux-dev-lora:091495765fa5ef2725a175a57b276ec30dc9d39c22d30410f2ede68a3eab66b3"
FAST: dict[str, Any] = {
    "prompt": "a red fox",
    "num_inference_steps": 1,
    "seed": 7,
    "output_format": "png",
}
LORA_A = tiny_flux.lora_bytes(seed=1)
LORA_B = tiny_flux.lora_bytes(seed=2)
REPO = "someone/fox-style"


def _other_model_lora() -> bytes:
    """Tensors in LoRA form for modules this transformer does not have."""
    import torch
    from safetensors.torch import save

    return save(
        {
            "transformer.no_such_block.lora_A.weight": torch.ones(4, 32),
            "transformer.no_such_block.lora_B.weight": torch.ones(32, 4),
        }
    )


@pytest.fixture(scope="module")
def files() -> Iterator[FileServer]:
    with FileServer() as server:
        server.files["/loras/a.safetensors"] = LORA_A
        server.files["/loras/b.safetensors"] = LORA_B
        server.files["/loras/not-a-lora.safetensors"] = b"these are not tensors"
        server.files["/loras/other-model.safetensors"] = _other_model_lora()
        server.files["/pget/abc/def/trained_model.tar"] = tiny_flux.training_tar_bytes(seed=1)
        server.hub_repo(REPO, {"README.md": b"# style", "lora.safetensors": LORA_A})
        yield server


@pytest.fixture
def flux_settings(settings: Settings, files: FileServer) -> Settings:
    # The loopback server stands for the internet: allowed here, refused by default.
    return settings.model_copy(
        update={
            "fetch_allowed_networks": ["127.0.0.0/8"],
            "hub_url": files.url,  # it is the Hub too
            "png_compress_level": 1,
        }
    )


@pytest.fixture
def flux(flux_settings: Settings) -> Iterator[tuple[TestClient, dict[str, str]]]:
    with app_client(flux_settings) as client:
        yield client, {"Authorization": f"Bearer {make_token(client)}"}


def create(client: TestClient, auth: dict[str, str], ref: str, **changes: Any) -> Any:
    """``name=None`` leaves that input out."""
    inputs = {k: v for k, v in {**FAST, **changes}.items() if v is not None}
    return client.post(
        "/replicate/v1/predictions",
        json={"version": ref, "input": inputs},
        headers={**auth, "Prefer": "respond-async"},
    )


def predict(client: TestClient, auth: dict[str, str], ref: str, **changes: Any) -> dict[str, Any]:
    response = create(client, auth, ref, **changes)
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    if body["status"] not in ("succeeded", "failed", "canceled"):
        body = finished(client, body["urls"]["get"], auth)
    return body


def pictures(client: TestClient, auth: dict[str, str], ref: str, **changes: Any) -> list[Any]:
    body = predict(client, auth, ref, **changes)
    assert body["status"] == "succeeded", body["error"]
    return [
        np.asarray(Image.open(io.BytesIO(download(client, u))), np.int16) for u in body["output"]
    ]


def differ(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and float(np.abs(a - b).mean()) > 0.5


def test_each_aspect_ratio_gives_its_size(flux: tuple[TestClient, dict[str, str]]) -> None:
    client, auth = flux
    for ratio, size in ASPECT_RATIOS.items():
        body = predict(client, auth, SCHNELL, aspect_ratio=ratio, output_format="jpg")
        assert body["status"] == "succeeded", body["error"]
        (url,) = body["output"]
        assert url.endswith("/out-0.jpg")
        assert Image.open(io.BytesIO(download(client, url))).size == size, ratio


def test_seed_is_logged_repeats_and_num_outputs_is_one_batch(
    flux: tuple[TestClient, dict[str, str]],
) -> None:
    client, auth = flux
    drawn = predict(client, auth, DEV, seed=None)
    assert drawn["status"] == "succeeded", drawn["error"]
    match = re.search(r"Using seed: (\d+)", drawn["logs"])
    assert match is not None and 0 <= int(match.group(1)) < 65536
    assert "Note: this server runs tiny random weights" in drawn["logs"]
    seed = int(match.group(1))
    first, second = pictures(client, auth, DEV, seed=seed, num_outputs=2)
    (again,) = pictures(client, auth, DEV, seed=seed)
    # One generator over one batch: its first image is the single image of that seed (but
    # for the last bits: a batch of two sums its floats in another order).
    assert float(np.abs(first - again).mean()) < 0.1
    assert differ(first, second)
    # guidance_scale reaches dev's guidance embedding.
    (guided,) = pictures(client, auth, DEV, seed=seed, guidance_scale=10.0)
    assert differ(guided, again)
    drawn_image = np.asarray(Image.open(io.BytesIO(download(client, drawn["output"][0]))))
    assert np.array_equal(drawn_image, again)  # the logged seed repeats the image exactly


def test_schnell_has_no_guidance_scale(client: TestClient, auth: dict[str, str]) -> None:
    # Fixed at 0 in schnell's original: its schema refuses the input, nothing is ignored.
    problem = assert_problem(create(client, auth, SCHNELL, guidance_scale=3.0), 422)
    assert "guidance_scale" in problem["detail"]


def test_img2img_output_follows_aspect_ratio(flux: tuple[TestClient, dict[str, str]]) -> None:
    client, auth = flux
    source = data_uri(noise_image(100, 60))
    body = predict(
        client, auth, SCHNELL, image=source, aspect_ratio="4:3", prompt_strength=0.5,
        num_inference_steps=2,
    )  # fmt: skip
    assert body["status"] == "succeeded", body["error"]
    assert "img2img mode" in body["logs"]
    (url,) = body["output"]
    assert Image.open(io.BytesIO(download(client, url))).size == (1152, 896)
    (text_only,) = pictures(client, auth, SCHNELL, aspect_ratio="4:3", num_inference_steps=2)
    image_based = np.asarray(Image.open(io.BytesIO(download(client, url))), np.int16)
    assert differ(image_based, text_only)
    problem = assert_problem(create(client, auth, SCHNELL, image=source, prompt_strength=0), 422)
    assert [f["field"] for f in problem["invalid_fields"]] == ["input.prompt_strength"]


def test_output_formats_decode_and_quality_changes_the_size(
    flux: tuple[TestClient, dict[str, str]],
) -> None:
    client, auth = flux
    sizes = {}
    for output_format, pil_format, content_type in (
        ("webp", "WEBP", "image/webp"),
        ("jpg", "JPEG", "image/jpeg"),
        ("png", "PNG", "image/png"),
    ):
        # png ignores output_quality (as the originals)
        for quality in (5, 95) if output_format != "png" else (5,):
            body = predict(
                client, auth, SCHNELL, output_format=output_format, output_quality=quality
            )
            assert body["status"] == "succeeded", body["error"]
            (url,) = body["output"]
            assert url.endswith(f"/out-0.{output_format}")
            response = client.get(url)
            assert response.headers["content-type"] == content_type
            picture = Image.open(io.BytesIO(response.content))
            assert picture.format == pil_format and picture.size == (1024, 1024)
            sizes[output_format, quality] = len(response.content)
    assert sizes["webp", 5] < sizes["webp", 95]
    assert sizes["jpg", 5] < sizes["jpg", 95]


def test_a_lora_changes_the_image_and_never_leaks_into_other_predictions(
    flux: tuple[TestClient, dict[str, str]], files: FileServer
) -> None:
    client, auth = flux
    url_a, url_b = f"{files.url}/loras/a.safetensors", f"{files.url}/loras/b.safetensors"
    (base,) = pictures(client, auth, DEV)
    (with_a,) = pictures(client, auth, DEV, hf_lora=url_a, lora_scale=1.0)
    (after_a,) = pictures(client, auth, DEV)
    (with_b,) = pictures(client, auth, DEV, hf_lora=url_b, lora_scale=1.0)
    (scale_0,) = pictures(client, auth, DEV, hf_lora=url_a, lora_scale=0.0)
    (empty,) = pictures(client, auth, DEV, hf_lora="")
    assert differ(with_a, base) and differ(with_b, base) and differ(with_a, with_b)
    for plain in (after_a, scale_0, empty):
        assert np.array_equal(plain, base)
    # Downloaded once, then served from the cache.
    assert files.requests["/loras/a.safetensors"] == 1


def test_every_lora_form_loads_the_same_lora(
    flux: tuple[TestClient, dict[str, str]], files: FileServer
) -> None:
    client, auth = flux
    forms = [
        f"{files.url}/loras/a.safetensors",  # any .safetensors URL
        REPO,  # a Hub repo id (the hub is the loopback server here)
        f"{files.url}/{REPO}/blob/main/lora.safetensors",  # a Hub file URL
        f"{files.url}/pget/abc/def/trained_model.tar",  # a Replicate training tarball
    ]
    results = []
    for form in forms:
        body = predict(client, auth, SCHNELL, hf_lora=form)
        assert body["status"] == "succeeded", (form, body["error"])
        assert f"Loading LoRA weights: {form}" in body["logs"]
        results.append(np.asarray(Image.open(io.BytesIO(download(client, body["output"][0])))))
    (base,) = pictures(client, auth, SCHNELL)
    assert differ(results[0].astype(np.int16), base)
    for result in results[1:]:
        assert np.array_equal(result, results[0])
    assert files.requests[f"/{REPO}/resolve/{HUB_REVISION}/lora.safetensors"] == 1


def test_lora_forms_are_recognised() -> None:
    hub = "https://huggingface.co"
    assert parse("alvdansen/frosting_lane_flux") is not None
    assert parse("alvdansen/frosting_lane_flux").kind == "hub-repo"  # type: ignore[union-attr]
    tar = parse("https://replicate.delivery/yhqm/abc/trained_model.tar")
    assert tar is not None and tar.kind == "training-tar"
    hub_file = parse(f"{hub}/XLabs-AI/flux-lora/blob/main/sub/art.safetensors")
    assert hub_file is not None
    assert hub_file.target == f"{hub}/XLabs-AI/flux-lora/resolve/main/sub/art.safetensors"
    civitai = parse("https://civitai.com/api/download/models/123?type=Model&format=SafeTensor")
    assert civitai is not None and civitai.kind == "file"
    assert parse("") is None and parse("  ") is None
    for bad in ("lora", "https://example.com/page.html", "ftp://x.org/a.safetensors", "a/b/c"):
        with pytest.raises(LoraError, match="Hugging Face repo id"):
            parse(bad)


@pytest.mark.parametrize(
    "value", ["just-a-name", "https://example.com/style.ckpt", "s3://bucket/a.safetensors"]
)
def test_bad_lora_strings_are_refused_naming_the_forms(
    client: TestClient, auth: dict[str, str], value: str
) -> None:
    problem = assert_problem(create(client, auth, DEV, hf_lora=value), 422)
    (field,) = problem["invalid_fields"]
    assert field["field"] == "input.hf_lora"
    assert "civitai" in field["description"] and ".safetensors" in field["description"]


def test_loras_that_cannot_be_used_fail_clearly(
    flux: tuple[TestClient, dict[str, str]], files: FileServer
) -> None:
    client, auth = flux
    missing = predict(client, auth, SCHNELL, hf_lora=f"{files.url}/loras/gone.safetensors")
    assert missing["status"] == "failed"
    assert missing["error"].startswith("hf_lora:") and "404" in missing["error"]
    garbage = predict(client, auth, SCHNELL, hf_lora=f"{files.url}/loras/not-a-lora.safetensors")
    assert garbage["status"] == "failed"
    assert "hf_lora" in garbage["error"] and "safetensors" in garbage["error"]
    other = predict(client, auth, SCHNELL, hf_lora=f"{files.url}/loras/other-model.safetensors")
    assert other["status"] == "failed"
    assert other["error"].startswith("hf_lora: the file is not a Flux LoRA this model can load")
    no_repo = predict(client, auth, SCHNELL, hf_lora="someone/unknown")
    assert no_repo["status"] == "failed" and "someone/unknown" in no_repo["error"]


def test_a_lora_on_a_private_address_is_refused_by_default(
    settings: Settings, files: FileServer
) -> None:
    path = "/loras/b.safetensors"
    before = files.requests[path]
    with app_client(settings) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        body = predict(client, auth, SCHNELL, hf_lora=files.url + path)
    assert body["status"] == "failed"
    assert "hf_lora" in body["error"] and "REPLIGATE_FETCH_ALLOW_PRIVATE" in body["error"]
    assert files.requests[path] == before


def test_concurrent_predictions_download_a_lora_once(
    flux_settings: Settings, files: FileServer
) -> None:
    path = "/loras/held.safetensors"
    files.files[path] = tiny_flux.lora_bytes(seed=3)
    files.held[path] = gate = threading.Event()
    with app_client(flux_settings, concurrency_per_device=2) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        started = [create(client, auth, SCHNELL, hf_lora=files.url + path) for _ in range(2)]
        urls = [response.json()["urls"]["get"] for response in started]
        # Both are running and one download has reached the server; then let it answer.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = [client.get(url, headers=auth).json()["status"] for url in urls]
            if files.requests[path] == 1 and states == ["processing", "processing"]:
                break
            time.sleep(0.02)
        gate.set()
        bodies = [finished(client, url, auth) for url in urls]
    assert [body["status"] for body in bodies] == ["succeeded", "succeeded"]
    assert files.requests[path] == 1


def test_flagged_images_fail_the_prediction_unless_the_checker_is_disabled(
    flux_settings: Settings, tiny_weights: Path, tmp_path: Path
) -> None:
    tiny_safety.safety_checker(tmp_path / "checker", flag=True)
    weights = weights_with_checker(tmp_path / "weights", tiny_weights, tmp_path / "checker")
    with app_client(flux_settings, weights_dir=weights) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        flagged = predict(client, auth, SCHNELL, num_outputs=2, output_format="jpg")
        bypassed = predict(client, auth, SCHNELL, output_format="jpg", disable_safety_checker=True)
    assert flagged["status"] == "failed"
    assert flagged["error"] == NSFW_ERROR
    assert "NSFW content detected in image 1" in flagged["logs"]
    assert bypassed["status"] == "succeeded"
    assert [url.rsplit("/", 1)[-1] for url in bypassed["output"]] == ["out-0.jpg"]


@pytest.mark.parametrize("ref", [SCHNELL, DEV.split(":")[0]], ids=["schnell-version", "dev-model"])
def test_the_official_client_runs_both_models(
    flux_settings: Settings, files: FileServer, ref: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx
    import replicate

    monkeypatch.setenv("REPLICATE_POLL_INTERVAL", "0.05")
    monkeypatch.delenv("REPLICATE_API_TOKEN", raising=False)
    monkeypatch.delenv("REPLICATE_BASE_URL", raising=False)
    with LiveServer(create_app(flux_settings)) as server:
        token = server.make_token()
        client = replicate.Client(api_token=token, base_url=server.url)
        output = client.run(
            ref,
            input={
                "prompt": "a red fox",
                "num_inference_steps": 1,
                "aspect_ratio": "21:9",
                "hf_lora": f"{files.url}/loras/b.safetensors",
            },
        )
        assert isinstance(output, list) and len(output) == 1
        response = httpx.get(str(output[0]), headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/webp"  # the default output_format
    picture = Image.open(io.BytesIO(response.content))
    assert picture.format == "WEBP" and picture.size == (1536, 640)


def test_gated_flux_dev_says_which_token_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import diffusers

    from repligate.backends import runner_env_factory
    from repligate.fetch import Fetcher
    from repligate.models.flux_dev_lora import MODEL
    from repligate.runners.weights import WeightsUnavailable

    settings = Settings(data_dir=tmp_path / "data", weights_dir=tmp_path / "empty")
    env = runner_env_factory(settings, Fetcher.from_settings(settings))
    gated = type("GatedRepoError", (OSError,), {})

    def refuse(source: str, **kwargs: Any) -> None:
        raise gated(f"401 Client Error: access to {source} is restricted")

    monkeypatch.setattr(diffusers.FluxPipeline, "from_pretrained", refuse)
    assert MODEL.runner is not None
    with pytest.raises(WeightsUnavailable) as caught:
        MODEL.runner(env, MODEL).text_to_image()  # type: ignore[attr-defined]
    assert "black-forest-labs/FLUX.1-dev is gated: accept its terms and set HF_TOKEN" in str(
        caught.value
    )

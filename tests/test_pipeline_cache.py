"""The pipeline cache keeps what fits in its memory budget, shared modules counted once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from repligate.app import create_app
from repligate.runners.cache import PipelineCache, SizedValue, module_bytes
from repligate.settings import Settings
from tests.conftest import FAST_SD_INPUT, SD_REF, make_token
from tests.sd_family import IMG2IMG_REF, INPAINT_REF, data_uri, half_mask, noise_image

SD = "stability-ai__stable-diffusion"


def pipeline_bytes(directory: Path) -> int:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(directory)
    return sum(module_bytes(m) for m in pipe.components.values() if hasattr(m, "parameters"))


@pytest.fixture
def weights(tmp_path: Path, tiny_weights: Path) -> Path:
    """stable-diffusion-img2img points at the same directory as stable-diffusion (as both
    default to one hub repo), so the two share their modules."""
    root = tmp_path / "weights"
    root.mkdir()
    for name in (SD, "stability-ai__stable-diffusion-inpainting"):
        (root / name).symlink_to(tiny_weights / name, target_is_directory=True)
    (root / "stability-ai__stable-diffusion-img2img").symlink_to(root / SD)
    return root


def loaded_after(client: TestClient, auth: dict[str, str], *runs: tuple[str, Any]) -> list[str]:
    for version, inputs in runs:
        body = client.post(
            "/replicate/v1/predictions", json={"version": version, "input": inputs}, headers=auth
        ).json()
        assert body["status"] == "succeeded", body["error"]
    return sorted(client.get("/health").json()["models_loaded"])


def test_past_the_budget_the_least_recently_used_pipeline_goes(
    tmp_path: Path, weights: Path, tiny_weights: Path
) -> None:
    one = pipeline_bytes(tiny_weights / SD)
    settings = Settings(
        data_dir=tmp_path / "data",
        weights_dir=weights,
        safety_checker=False,
        pipeline_cache_bytes=int(one * 1.5),
    )
    inpaint = {
        **FAST_SD_INPUT,
        "image": data_uri(noise_image(64, 64)),
        "mask": data_uri(half_mask(64, 64)),
    }
    img2img = {"prompt": "a fox", "image": data_uri(noise_image(64, 64)), "num_inference_steps": 2}
    with TestClient(create_app(settings)) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        # Two pipelines of their own do not fit: the older one is dropped ...
        assert loaded_after(client, auth, (SD_REF, FAST_SD_INPUT), (INPAINT_REF, inpaint)) == [
            "stability-ai/stable-diffusion-inpainting"
        ]
        # ... and comes back on demand, pushing out the other.
        assert loaded_after(client, auth, (SD_REF, FAST_SD_INPUT)) == [
            "stability-ai/stable-diffusion"
        ]
        # img2img shares SD 2.1's modules: both fit in the room of one.
        assert loaded_after(client, auth, (IMG2IMG_REF, img2img)) == [
            "stability-ai/stable-diffusion",
            "stability-ai/stable-diffusion-img2img",
        ]
        cache = client.app.state.container.provider.env().pipelines  # type: ignore[attr-defined]
        assert cache.held_bytes() == one


def test_the_newest_pipeline_stays_even_when_alone_over_budget(tiny_weights: Path) -> None:
    from diffusers import StableDiffusionPipeline

    released: list[bool] = []
    cache = PipelineCache(max_bytes=1, release=lambda: released.append(True))
    first = cache.get("a", lambda: StableDiffusionPipeline.from_pretrained(tiny_weights / SD))
    assert "a" in cache and not released
    cache.get("b", lambda: StableDiffusionPipeline.from_pretrained(tiny_weights / SD))
    assert "a" not in cache and "b" in cache and released == [True]
    assert cache.get("b", lambda: first) is not first  # cached: the loader is not called


class FakeSession:
    """Stands for an onnxruntime InferenceSession: nothing torch, its size declared."""

    def __init__(self, memory_bytes: int) -> None:
        self.memory_bytes = memory_bytes


def test_entries_that_are_not_torch_count_the_bytes_they_declare() -> None:
    import torch

    released: list[bool] = []
    cache = PipelineCache(max_bytes=1000, release=lambda: released.append(True))
    session = cache.get("rembg", lambda: FakeSession(600))
    assert cache.held_bytes() == 600
    # A value that cannot carry the attribute is wrapped with its size (e.g. its file's).
    wrapped = cache.get("other", lambda: SizedValue(object(), 300))
    assert cache.held_bytes() == 900 and wrapped.memory_bytes == 300
    # The same entry under a second key is counted once.
    assert cache.get("rembg-again", lambda: session) is session
    assert cache.held_bytes() == 900 and not released
    assert cache.get("other", lambda: SizedValue(object(), 1)) is wrapped  # now the newest
    # Torch modules and declared sizes add up against one budget: past it, the least
    # recently used go first (both keys of the session, for its bytes to be freed).
    linear = torch.nn.Linear(10, 10)  # 110 float32 parameters: 440 bytes
    assert module_bytes(linear) == 440
    cache.get("torch", lambda: linear)
    assert "rembg" not in cache and "rembg-again" not in cache
    assert "other" in cache and "torch" in cache
    assert cache.held_bytes() == 740 and released == [True]

"""The SD family's safety checker through the HTTP API: dropped, failed and blackened
images, the per-request and server-wide switches, and a server without checker weights.
Each test writes a tiny checker that flags what it needs (repligate.testing.tiny_safety)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from repligate.runners.safety import NSFW_ERROR
from repligate.settings import Settings
from repligate.testing import tiny_safety
from tests.api_helpers import app_client
from tests.conftest import FAST_SD_INPUT, SD_REF, make_token
from tests.sd_family import (
    IMG2IMG_REF,
    INPAINT_REF,
    data_uri,
    half_mask,
    noise_image,
    output_images,
    output_names,
    predict,
    weights_with_checker,
)

INPAINT_INPUT = {
    "prompt": "a bench",
    "image": data_uri(noise_image(64, 64)),
    "mask": data_uri(half_mask(64, 64)),
    "width": 64,
    "height": 64,
    "num_inference_steps": 2,
    "num_outputs": 2,
}
IMG2IMG_INPUT = {
    "prompt": "a harbour",
    "image": data_uri(noise_image(64, 64)),
    "num_inference_steps": 2,
    "prompt_strength": 1.0,
    "num_outputs": 2,
}


@pytest.fixture(scope="module")
def flag_all_weights(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> Path:
    root = tmp_path_factory.mktemp("flag-all")
    tiny_safety.safety_checker(root / "checker", flag=True)
    return weights_with_checker(root / "weights", tiny_weights, root / "checker")


def serve(settings: Settings, weights: Path, **changes: Any) -> Any:
    return app_client(settings, weights_dir=weights, **changes)


def bearer(client: TestClient) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(client)}"}


def test_stable_diffusion_fails_when_every_image_is_flagged(
    settings: Settings, flag_all_weights: Path
) -> None:
    with serve(settings, flag_all_weights) as client:
        body = predict(client, bearer(client), SD_REF, {**FAST_SD_INPUT, "num_outputs": 2})
    assert body["status"] == "failed"
    assert body["error"] == NSFW_ERROR
    assert "NSFW content detected in image 0" in body["logs"]
    assert "NSFW content detected in image 1" in body["logs"]


def test_inpainting_fails_when_every_image_is_flagged_unless_disabled(
    settings: Settings, flag_all_weights: Path
) -> None:
    with serve(settings, flag_all_weights) as client:
        auth = bearer(client)
        flagged = predict(client, auth, INPAINT_REF, INPAINT_INPUT)
        bypassed = predict(
            client, auth, INPAINT_REF, {**INPAINT_INPUT, "disable_safety_checker": True}
        )
        assert flagged["status"] == "failed"
        assert flagged["error"] == NSFW_ERROR
        assert output_names(bypassed) == ["out-0.png", "out-1.png"]
        assert all(np.asarray(p).any() for p in output_images(client, bypassed))


def test_img2img_returns_black_images_for_flagged_ones(
    settings: Settings, flag_all_weights: Path
) -> None:
    with serve(settings, flag_all_weights) as client:
        body = predict(client, bearer(client), IMG2IMG_REF, IMG2IMG_INPUT)
        assert body["status"] == "succeeded"
        assert output_names(body) == ["out-0.png", "out-1.png"]
        pictures = output_images(client, body)
    assert [picture.size for picture in pictures] == [(64, 64), (64, 64)]
    assert not any(np.asarray(picture).any() for picture in pictures)
    assert "A black image will be returned instead" in body["logs"]


def test_the_server_wide_switch_turns_the_checker_off(
    settings: Settings, flag_all_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPLIGATE_SAFETY_CHECKER", "false")
    switched_off = Settings(
        data_dir=settings.data_dir, weights_dir=flag_all_weights, log_flush_interval=0.0
    )
    assert switched_off.safety_checker is False
    with app_client(switched_off) as client:
        auth = bearer(client)
        sd = predict(client, auth, SD_REF, FAST_SD_INPUT)
        img2img = predict(client, auth, IMG2IMG_REF, IMG2IMG_INPUT)
        assert output_names(sd) == ["out-0.png"]
        assert all(np.asarray(p).any() for p in output_images(client, img2img))
    assert "NSFW" not in sd["logs"] + img2img["logs"]


def test_flagged_images_leave_gaps_in_the_output_names(
    tmp_path: Path, settings: Settings, tiny_weights: Path
) -> None:
    """A checker that flags by brightness, its threshold set between the images of one
    batch: the brightest or darkest image (whichever is not the last) is dropped."""
    inputs = {**FAST_SD_INPUT, "num_outputs": 3, "seed": 21}
    with serve(settings, tiny_weights) as client:
        everything = predict(client, bearer(client), SD_REF, inputs)
        pictures = output_images(client, everything)
    assert output_names(everything) == ["out-0.png", "out-1.png", "out-2.png"]

    scores = tiny_safety.brightness_scores(tiny_weights / "safety-checker", pictures)
    brightest, darkest = int(np.argmax(scores)), int(np.argmin(scores))
    dropped = brightest if brightest != 2 else darkest
    others = [score for i, score in enumerate(scores) if i != dropped]
    nearest = min(others, key=lambda score: abs(score - scores[dropped]))
    # diffusers rounds score - threshold to 3 decimals before comparing it with 0.
    assert abs(scores[dropped] - nearest) > 0.004, scores
    threshold = (scores[dropped] + nearest) / 2
    checker = tmp_path / "checker"
    if dropped == brightest:
        tiny_safety.safety_checker(checker, brighter_than=threshold)
    else:
        tiny_safety.safety_checker(checker, darker_than=threshold)
    weights = weights_with_checker(tmp_path / "weights", tiny_weights, checker)

    with serve(settings, weights) as client:
        body = predict(client, bearer(client), SD_REF, inputs)
        kept = output_images(client, body)
    assert output_names(body) == [f"out-{i}.png" for i in range(3) if i != dropped]
    assert f"NSFW content detected in image {dropped}" in body["logs"]
    expected = [np.asarray(picture) for i, picture in enumerate(pictures) if i != dropped]
    assert all(np.array_equal(np.asarray(a), b) for a, b in zip(kept, expected, strict=True))


def test_a_server_without_checker_weights_runs_and_says_so_once(
    tmp_path: Path,
    settings: Settings,
    tiny_weights: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # No safety-checker/ dir, and the hub is offline in tests (HF_HUB_OFFLINE=1).
    weights = weights_with_checker(tmp_path / "weights", tiny_weights, None)
    caplog.set_level(logging.WARNING, logger="repligate.runners.safety")
    with serve(settings, weights) as client:
        auth = bearer(client)
        first = predict(client, auth, SD_REF, FAST_SD_INPUT)
        second = predict(client, auth, INPAINT_REF, INPAINT_INPUT)
    assert first["status"] == "succeeded"
    assert output_names(second) == ["out-0.png", "out-1.png"]
    warnings = [r for r in caplog.records if "WITHOUT a safety checker" in r.getMessage()]
    assert len(warnings) == 1

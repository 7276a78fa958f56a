"""andreasjansson/stable-diffusion-animation over the HTTP API on tiny random weights:
frame counts for frames x in-betweens x FILM x ping-pong, GIF timing, the MP4, live key
frames in ``output``, progress in ``logs``, cancel mid-run, seeds, and FILM's weights.

One app serves the module (the pipeline loads once); every run is 128 px (the schema's
smallest size) with 1-2 steps and a few frames."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from repligate.runners import animation_frames as plan
from repligate.runners.film import DIR_NAME as FILM_DIR
from repligate.runners.safety import NSFW_ERROR
from repligate.settings import Settings
from repligate.testing import tiny_safety
from tests.api_helpers import app_client, assert_problem, download, poll
from tests.conftest import make_token
from tests.sd_family import predict, weights_with_checker
from tests.video_helpers import gif_frames, gif_loop, mp4_frames

VERSION = "ca1f5e306e5721e19c473e0d094e6603f0456fe759c10715fcd6c1b79242d4a5"
FAST: dict[str, Any] = {
    "prompt_start": "a red fox",
    "prompt_end": "a blue bird",
    "width": 128,
    "height": 128,
    "num_inference_steps": 1,
    "prompt_strength": 0.5,
    "guidance_scale": 1,
    "num_animation_frames": 2,
    "num_interpolation_steps": 2,
    "film_interpolation": False,
    "output_format": "mp4",
    "seed": 3,
}


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path, fixed_torch_threads: int
) -> Iterator[tuple[TestClient, dict[str, str]]]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("animation-data"),
        weights_dir=tiny_weights,
        log_flush_interval=0.0,
        public_base_url=None,
        torch_threads=fixed_torch_threads,
    )
    with app_client(settings) as client:
        yield client, {"Authorization": f"Bearer {make_token(client)}"}


def _run(served: tuple[TestClient, dict[str, str]], **changes: Any) -> dict[str, Any]:
    client, auth = served
    body = predict(client, auth, VERSION, {**FAST, **changes})
    assert body["status"] == "succeeded", body.get("error")
    return body


def _video(served: tuple[TestClient, dict[str, str]], body: dict[str, Any]) -> bytes:
    return download(served[0], body["output"][-1])


# (key frames, interpolation steps, FILM, ping-pong, prompt_end, width) -> video frames
COUNTS = [
    (2, 3, False, False, "b", 256, 3),  # (F-1) * S, the last key frame never shown
    (3, 2, False, True, "b", 128, 6),  # 4 frames, then frames[-1:1:-1]: 2 more
    (2, 3, True, False, "b", 256, 5),  # FILM: S=3 rounds up to 4 = 2^2: (F-1) * 4 + 1
    (3, 1, True, True, "b", 128, 8),  # FILM depth at least 1: 5 frames, ping-pong 8
    (2, 1, False, False, "b | c", 128, 2),  # three prompts: 3 key frames, 1 frame per pair
]


@pytest.mark.parametrize(
    ("frames", "steps", "film", "ping_pong", "end", "width", "expected"), COUNTS
)
def test_the_mp4_has_the_originals_frame_count_at_the_asked_size(
    served: tuple[TestClient, dict[str, str]],
    frames: int,
    steps: int,
    film: bool,
    ping_pong: bool,
    end: str,
    width: int,
    expected: int,
) -> None:
    body = _run(
        served,
        num_animation_frames=frames,
        num_interpolation_steps=steps,
        film_interpolation=film,
        gif_ping_pong=ping_pong,
        prompt_end=end,
        width=width,
    )
    assert [url.rsplit("/", 1)[-1] for url in body["output"]] == ["video.mp4"]
    decoded = mp4_frames(_video(served, body))
    assert len(decoded) == expected
    # Structured progress counts the same frames, ping-pong included, and the last step.
    assert body["progress"] == {
        "current": 1,
        "total": 1,
        "percentage": 100.0,
        "frame": {"current": expected, "total": expected},
    }
    assert {frame.shape for frame in decoded} == {(128, width, 3)}
    if ping_pong:
        # The way back mirrors the way there (frames 0 and 1 are not repeated).
        forward = expected // 2 + 1
        mirrored = [decoded[i] for i in plan.ping_pong_tail(forward)]
        for back, there in zip(decoded[forward:], mirrored, strict=True):
            assert np.abs(back.astype(int) - there.astype(int)).mean() < 8


def test_a_gif_has_every_frame_for_1000_over_fps_ms_and_loops(
    served: tuple[TestClient, dict[str, str]],
) -> None:
    body = _run(served, output_format="gif", gif_ping_pong=True, gif_frames_per_second=3)
    response = served[0].get(body["output"][-1])
    assert response.headers["content-type"] == "image/gif"
    frames = gif_frames(response.content)
    # 2 key frames x 2 steps: 2 frames; ping-pong repeats the last one: 2 x 2 - 2 = 2.
    assert len(frames) == 2
    assert [ms for _, ms in frames] == [330, 330]  # int(1000 / 3), in GIF's 10 ms units
    assert gif_loop(response.content) == 0
    assert frames[0][0].shape == (128, 128, 3)


def test_metrics_show_the_pipeline_cache_and_the_runs(
    served: tuple[TestClient, dict[str, str]],
) -> None:
    # Here rather than in test_metrics.py: this module's app has run real pipelines.
    _run(served)
    text = served[0].get("/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    # The SD pipeline (and the safety checker) loaded once each, whatever the runs.
    assert 1 <= samples[("repligate_pipeline_loads_total", ())] <= 2
    assert samples[("repligate_pipeline_cache_bytes", ())] > 0
    succeeded = (("model", "andreasjansson/stable-diffusion-animation"), ("status", "succeeded"))
    assert samples[("repligate_predictions_total", succeeded)] >= 1


def test_intermediate_output_shows_key_frames_in_order_then_the_video(
    served: tuple[TestClient, dict[str, str]],
) -> None:
    client, _ = served
    body = _run(served, num_animation_frames=3, intermediate_output=True, output_format="gif")
    names = [url.rsplit("/", 1)[-1] for url in body["output"]]
    assert names == ["key-frame-000.png", "key-frame-001.png", "key-frame-002.png", "video.gif"]
    keys = [_png(client, url) for url in body["output"][:3]]
    video = [pixels for pixels, _ in gif_frames(_video(served, body))]
    assert len(video) == 4
    # Latent in-betweens start each pair on its key frame: frames 0 and 2 are key frames
    # 0 and 1, as the GIF writer quantises them.
    for key, frame in ((keys[0], video[0]), (keys[1], video[2])):
        quantised = key.convert("P", palette=Image.Palette.ADAPTIVE).convert("RGB")
        assert np.array_equal(np.asarray(quantised), frame)
    logs = body["logs"]
    for line in ("Using seed: 3", "Key frame 1/3", "Key frame 3/3", "Video frames: 4/4"):
        assert line in logs, logs
    assert "| 1/1 [" in logs  # a tqdm line per denoising step of each key frame


def test_output_grows_while_it_runs_and_a_cancel_keeps_the_key_frames(
    served: tuple[TestClient, dict[str, str]],
) -> None:
    client, auth = served
    # Two key frames come quickly; then minutes of work (49 pairs of 49 in-betweens, each
    # a 512 px VAE decode): a cancel that did not stop it would keep the worker from the
    # run at the end, and the poll there would fail.
    slow = {
        **FAST,
        "width": 512,
        "height": 512,
        "num_inference_steps": 2,
        "num_animation_frames": 50,
        "num_interpolation_steps": 50,
        "intermediate_output": True,
    }
    response = client.post(
        "/v1/predictions", json={"version": VERSION, "input": slow}, headers=auth
    )
    assert response.status_code == 201, response.text
    created = response.json()
    url = created["urls"]["get"]
    running = poll(client, url, auth, lambda b: len(b["output"] or []) >= 2)
    assert running["status"] == "processing"
    assert [u.rsplit("/", 1)[-1] for u in running["output"][:2]] == [
        "key-frame-000.png",
        "key-frame-001.png",
    ]
    canceled = client.post(created["urls"]["cancel"], headers=auth).json()
    assert canceled["status"] == "canceled"
    after = poll(client, url, auth, lambda b: b["completed_at"] is not None)
    assert after["status"] == "canceled"
    # What it had made stays, and is served; no video was written.
    names = [u.rsplit("/", 1)[-1] for u in after["output"]]
    assert names[:2] == ["key-frame-000.png", "key-frame-001.png"]
    assert all(name.startswith("key-frame-") for name in names)
    assert len(names) < 50
    assert _png(client, after["output"][1]).size == (512, 512)
    # The worker is free again.
    assert len(_run(served)["output"]) == 1


def test_the_seed_decides_the_frames(served: tuple[TestClient, dict[str, str]]) -> None:
    client, _ = served
    runs = [_run(served, intermediate_output=True, seed=seed) for seed in (5, 5, 6)]
    keys = [download(client, body["output"][1]) for body in runs]
    assert keys[0] == keys[1]
    assert keys[0] != keys[2]
    unseeded = {k: v for k, v in FAST.items() if k != "seed"}
    body = predict(client, served[1], VERSION, unseeded)
    seed = int(body["logs"].split("Using seed: ")[1].split()[0])
    assert 0 <= seed < 2**16


def test_prompt_strength_outside_0_to_1_is_refused(
    served: tuple[TestClient, dict[str, str]],
) -> None:
    client, auth = served
    for value, kind in ((1.5, "number_lte"), (-0.1, "number_gte")):
        response = client.post(
            "/v1/predictions",
            json={"version": VERSION, "input": {**FAST, "prompt_strength": value}},
            headers=auth,
        )
        problem = assert_problem(response, 422)
        assert [(f["type"], f["field"]) for f in problem["invalid_fields"]] == [
            (kind, "input.prompt_strength")
        ]


def test_without_film_weights_film_fails_saying_what_to_install_and_false_works(
    tmp_path: Path, settings: Settings, tiny_weights: Path
) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    for entry in tiny_weights.iterdir():
        if entry.name != FILM_DIR:
            (weights / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    with app_client(settings, weights_dir=weights) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        failed = predict(client, auth, VERSION, {**FAST, "film_interpolation": True})
        assert failed["status"] == "failed"
        error = failed["error"]
        assert f"{weights / FILM_DIR}" in error
        assert "repligate.runners.film_convert" in error
        assert "film_interpolation to false" in error
        assert failed["output"] is None
        body = predict(client, auth, VERSION, {**FAST, "film_interpolation": False})
        assert body["status"] == "succeeded", body["error"]


def _png(client: TestClient, url: str) -> Any:
    from tests.api_helpers import image

    picture = image(client, url)
    assert picture.format == "PNG"
    return picture.convert("RGB")


def test_a_flagged_first_frame_fails_it_with_the_nsfw_error(
    settings: Settings, tiny_weights: Path, tmp_path: Path
) -> None:
    tiny_safety.safety_checker(tmp_path / "checker", flag=True)
    weights = weights_with_checker(tmp_path / "weights", tiny_weights, tmp_path / "checker")
    with app_client(settings, weights_dir=weights) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        flagged = predict(client, auth, VERSION, FAST)
    assert flagged["status"] == "failed"
    assert flagged["error"] == NSFW_ERROR
    assert flagged["output"] is None

"""lucataco/animate-diff through the HTTP API on tiny random weights: an MP4 of 16 frames,
served as video/mp4 and shown as <video>; seeds, motion modules and checkpoints; pipelines
cached per (motion module, checkpoint); missing weights; cancel mid-run."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
import replicate
from fastapi.testclient import TestClient

from repligate.app import create_app
from repligate.settings import Settings
from repligate.testing.live_server import LiveServer
from tests.api_helpers import app_client, download, finished, poll
from tests.conftest import make_token
from tests.sd_family import predict
from tests.video_helpers import mp4_frames, top_level_boxes

VERSION = "beecf59c4aee8d81bf04f0381033dfa10dc16e845b4ae00d281e2fa377e48a9f"
REF = f"lucataco/animate-diff:{VERSION}"
FAST = {"prompt": "a cat walking", "steps": 1, "seed": 7}
# The tiny SD 1.5 UNet's sample_size (8) x the VAE's factor (8); real SD 1.5 says 64 x 8.
TINY_SIDE = 64


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """One torch thread: the same seed gives the same frames whatever the machine's load,
    and on a shared machine one thread never waits for a descheduled partner."""
    return settings.model_copy(update={"torch_threads": 1})


def video(client: TestClient, body: dict[str, Any]) -> bytes:
    assert body["status"] == "succeeded", body.get("error")
    assert isinstance(body["output"], str) and body["output"].endswith("/out.mp4")
    return download(client, body["output"])


def test_the_output_is_an_mp4_of_16_frames_that_plays_in_a_browser(
    client: TestClient, auth: dict[str, str]
) -> None:
    body = predict(client, auth, REF, FAST)
    response = client.get(body["output"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    data = response.content
    frames = mp4_frames(data)
    assert len(frames) == 16
    assert {frame.shape for frame in frames} == {(TINY_SIDE, TINY_SIDE, 3)}
    # The frames are pictures, not one colour.
    assert all(frame.std() > 1 for frame in frames)
    boxes = top_level_boxes(data)
    assert boxes.index("moov") < boxes.index("mdat")
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == 8
    logs = body["logs"]
    assert "Using seed: 7" in logs
    assert "1/1" in logs  # the denoising steps, tqdm-style
    assert "frame 16/16 decoded" in logs
    # Structured progress beside the log lines: the last step, and every frame decoded.
    assert body["progress"] == {
        "current": 1,
        "total": 1,
        "percentage": 100.0,
        "frame": {"current": 16, "total": 16},
    }
    # The prediction's page plays it.
    page = client.get(body["urls"]["web"])
    assert page.status_code == 200
    assert f'<video src="{body["output"]}"' in page.text
    assert "<img" not in page.text


def test_seed_motion_module_and_checkpoint_each_decide_the_video(
    client: TestClient, auth: dict[str, str]
) -> None:
    first = mp4_frames(video(client, predict(client, auth, REF, FAST)))
    again = mp4_frames(video(client, predict(client, auth, REF, FAST)))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    changes: list[dict[str, Any]] = [
        {"seed": 8},
        {"n_prompt": "blurry"},
        {"motion_module": "mm_sd_v15_v2", "path": "realisticVisionV40_v20Novae.safetensors"},
    ]
    for change in changes:
        other = mp4_frames(video(client, predict(client, auth, REF, {**FAST, **change})))
        assert len(other) == 16
        differences = [np.abs(a.astype(int) - b).mean() for a, b in zip(first, other, strict=True)]
        assert np.mean(differences) > 0.5, change

    # One pipeline per (motion module, checkpoint) stays loaded; all share one text encoder.
    pipelines = client.app.state.container.provider.env().pipelines  # type: ignore[attr-defined]
    keys = [
        "lucataco__animate-diff/mm_sd_v14/toonyou_beta3.safetensors",
        "lucataco__animate-diff/mm_sd_v15_v2/realisticVisionV40_v20Novae.safetensors",
    ]
    assert all(key in pipelines for key in keys)
    loaded = [pipelines.get(key, lambda: pytest.fail("not cached")) for key in keys]
    assert len({id(pipe.text_encoder) for pipe in loaded}) == 1
    assert len({id(pipe.unet) for pipe in loaded}) == 2
    assert "lucataco/animate-diff" in client.get("/health").json()["models_loaded"]


def test_a_missing_or_broken_checkpoint_fails_saying_what_to_do(
    settings: Settings, tiny_weights: Path, tmp_path: Path
) -> None:
    weights = tmp_path / "weights"
    model = weights / "lucataco__animate-diff"
    (model / "checkpoints").mkdir(parents=True)
    source = tiny_weights / "lucataco__animate-diff"
    for part in ("stable-diffusion-v1-5", "motion_modules"):
        (model / part).symlink_to(source / part, target_is_directory=True)
    (model / "checkpoints" / "lyriel_v16.safetensors").symlink_to(
        source / "checkpoints" / "lyriel_v16.safetensors"
    )
    (model / "checkpoints" / "rcnzCartoon3d_v10.safetensors").write_bytes(b"<html>login</html>")
    with app_client(settings, weights_dir=weights) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        body = predict(client, auth, REF, FAST)  # toonyou_beta3 is the default path
        assert body["status"] == "failed"
        assert "toonyou_beta3.safetensors" in body["error"]
        assert "civitai model version 78775" in body["error"]
        assert str(model / "checkpoints") in body["error"]
        broken = predict(client, auth, REF, {**FAST, "path": "rcnzCartoon3d_v10.safetensors"})
        assert broken["status"] == "failed"
        assert "rcnzCartoon3d_v10.safetensors is not a readable safetensors file" in broken["error"]
        present = predict(client, auth, REF, {**FAST, "path": "lyriel_v16.safetensors"})
        assert present["status"] == "succeeded", present["error"]


def test_invalid_inputs_are_refused_naming_the_field(
    client: TestClient, auth: dict[str, str]
) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"motion_module": "mm_sd_v16"}, "motion_module"),
        ({"path": "other.safetensors"}, "path"),
        ({"steps": 0}, "steps"),
        ({"guidance_scale": 11}, "guidance_scale"),
    ]
    for change, field in cases:
        response = client.post(
            "/v1/predictions", json={"version": REF, "input": {**FAST, **change}}, headers=auth
        )
        assert response.status_code == 422, response.text
        assert field in response.text


def test_cancel_mid_run_stops_between_steps_and_leaves_no_video(
    client: TestClient, auth: dict[str, str]
) -> None:
    slow = {**FAST, "steps": 100}
    created = client.post(
        "/v1/predictions", json={"version": REF, "input": slow}, headers=auth
    ).json()
    url = created["urls"]["get"]
    poll(client, url, auth, lambda body: "%|" in (body["logs"] or ""))
    response = client.post(created["urls"]["cancel"], headers=auth)
    assert response.status_code == 200 and response.json()["status"] == "canceled"
    # The worker stops at its next step: the next prediction runs, and no video was made.
    after_cancel = predict(client, auth, REF, FAST)
    assert after_cancel["status"] == "succeeded"
    canceled = finished(client, url, auth)
    assert canceled["status"] == "canceled"
    assert canceled["output"] is None
    assert "100/100" not in canceled["logs"] and "frame 1/16" not in canceled["logs"]
    assert client.get(f"/files/predictions/{created['id']}/out.mp4").status_code == 404


def test_the_official_client_runs_it_and_reads_the_progress(
    tiny_weights: Path, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path / "live-data",
        weights_dir=tiny_weights,
        log_flush_interval=0.0,
        public_base_url=None,
        torch_threads=1,
    )
    with LiveServer(create_app(settings)) as live:
        token = live.make_token()
        client = replicate.Client(api_token=token, base_url=live.url)
        prediction = client.predictions.create(version=REF, input={**FAST, "steps": 2})
        prediction.wait()
        assert prediction.status == "succeeded", prediction.error
        progress = prediction.progress
        assert progress is not None and (progress.current, progress.total) == (2, 2)
        # 1.0.7 hands http: output URLs back as strings; it downloads them with its token.
        output = client.run(f"lucataco/animate-diff:{VERSION}", input=FAST)
        assert isinstance(output, str) and output.endswith("/out.mp4")
        response = httpx.get(output, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert response.headers["content-type"] == "video/mp4"
        assert len(mp4_frames(response.content)) == 16

"""The official ``replicate`` client (1.0.7) against a live repligate server over HTTP.

Everything here goes through the client's public API, as a user's script would: run,
predictions, models and versions, on both route prefixes, and the errors it raises.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import replicate
from PIL import Image
from replicate.exceptions import ModelError, ReplicateError
from replicate.helpers import FileOutput

from repligate.app import create_app
from repligate.settings import Settings
from repligate.testing.live_server import LiveServer
from tests.conftest import FAST_SD_INPUT, SD_REF, SD_VERSION
from tests.sd_family import IMG2IMG_REF, noise_image

SD_MODEL = "stability-ai/stable-diffusion"
PREFIXES = ["", "/replicate"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("live-data")
    settings = Settings(
        data_dir=data_dir,
        weights_dir=tiny_weights,
        log_flush_interval=0.0,
        public_base_url=None,
        # One worker: predictions run one after another, in the order they came.
        concurrency_per_device=1,
    )
    with LiveServer(create_app(settings)) as server:
        yield server


@pytest.fixture(autouse=True)
def _client_env(official_client_env: None) -> None:
    """Every test here runs the official client."""


@pytest.fixture
def live_token(live: LiveServer) -> str:
    # A fresh key per test: listing is per key, so each test sees only its own predictions.
    return live.make_token()


def make_client(
    live: LiveServer, token: str | None, prefix: str = "", **kwargs: Any
) -> replicate.Client:
    return replicate.Client(api_token=token, base_url=live.url + prefix, **kwargs)


def png_size(url: str, token: str) -> tuple[int, int]:
    """Download an output as the client would (it sends its token along) and decode it."""
    response = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.format == "PNG"
        return image.size


def assert_png_outputs(
    output: Any, live: LiveServer, token: str, count: int, size: tuple[int, int]
) -> None:
    assert isinstance(output, list)
    assert len(output) == count
    for item in output:
        # 1.0.7 wraps only https: and data: strings in FileOutput; http: URLs stay strings.
        assert not isinstance(item, FileOutput)
        assert isinstance(item, str)
        assert item.startswith(f"{live.url}/files/predictions/")
        assert png_size(item, token) == size


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("ref", [SD_REF, SD_MODEL], ids=["version-ref", "model-ref"])
def test_run_returns_png_urls_of_the_requested_size(
    live: LiveServer, live_token: str, prefix: str, ref: str
) -> None:
    client = make_client(live, live_token, prefix)
    output = client.run(ref, input={**FAST_SD_INPUT, "width": 128, "height": 64, "num_outputs": 2})
    assert_png_outputs(output, live, live_token, count=2, size=(128, 64))


@pytest.mark.parametrize("prefix", PREFIXES)
def test_create_wait_get_and_list(live: LiveServer, live_token: str, prefix: str) -> None:
    client = make_client(live, live_token, prefix)
    # predictions.create sends `version` verbatim: both the bare hash and owner/name:hash.
    first = client.predictions.create(version=SD_VERSION, input=FAST_SD_INPUT)
    second = client.predictions.create(version=SD_REF, input={**FAST_SD_INPUT, "seed": 7})
    for prediction in (first, second):
        # Without a Prefer header Replicate's routes answer at once; the seed's /replicate
        # routes wait for the finished prediction.
        if prefix:
            assert prediction.status == "succeeded"
        else:
            assert prediction.status in ("starting", "processing")
        assert prediction.version == SD_VERSION
        assert prediction.urls is not None
        assert prediction.urls["get"] == f"{live.url}{prefix}/v1/predictions/{prediction.id}"
        prediction.wait()
        assert prediction.status == "succeeded", prediction.error
        assert prediction.error is None
        assert prediction.metrics is not None and "predict_time" in prediction.metrics
        assert_png_outputs(prediction.output, live, live_token, count=1, size=(64, 64))

    fetched = client.predictions.get(second.id)
    assert fetched.id == second.id
    assert fetched.status == "succeeded"
    assert fetched.input == {**FAST_SD_INPUT, "seed": 7}
    assert fetched.output == second.output
    assert "Using seed: 7" in (fetched.logs or "")

    page = client.predictions.list()
    assert [p.id for p in page.results] == [second.id, first.id]  # newest first
    assert page.next is None


@pytest.mark.parametrize("prefix", PREFIXES)
def test_files_create_list_get_and_delete(
    live: LiveServer, live_token: str, prefix: str, tmp_path: Path
) -> None:
    path = tmp_path / "in.png"
    noise_image(40, 30).save(path)
    client = make_client(live, live_token, prefix)
    first = client.files.create(path, metadata={"purpose": "test"})
    assert (first.name, first.content_type, first.size) == (
        "in.png",
        "image/png",
        path.stat().st_size,
    )
    assert first.checksums["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert first.metadata == {"purpose": "test"}
    assert first.urls["get"] == f"{live.url}{prefix}/v1/files/{first.id}"
    with path.open("rb") as handle:
        second = client.files.create(handle, filename="renamed.png")
    assert second.name == "renamed.png"

    assert [f.id for f in client.files.list()] == [second.id, first.id]
    assert client.files.get(first.id).dict() == first.dict()
    assert client.files.delete(first.id) is True
    with pytest.raises(ReplicateError) as caught:
        client.files.get(first.id)
    assert caught.value.status == 404
    assert [f.id for f in client.files.list()] == [second.id]


@pytest.mark.parametrize("prefix", PREFIXES)
def test_run_with_an_open_file_uploads_it_and_the_model_uses_it(
    live: LiveServer, live_token: str, prefix: str, tmp_path: Path
) -> None:
    path = tmp_path / "in.png"
    noise_image(100, 76).save(path)
    client = make_client(live, live_token, prefix)
    with path.open("rb") as image:
        output = client.run(
            IMG2IMG_REF,
            input={"prompt": "a fox", "image": image, "num_inference_steps": 4, "seed": 1},
        )
    # img2img keeps the input's size, floored to 32: the uploaded picture was the input.
    assert_png_outputs(output, live, live_token, count=1, size=(96, 64))
    [uploaded] = client.files.list()
    assert uploaded.name == "in.png"
    [prediction] = client.predictions.list().results
    assert prediction.input is not None
    assert prediction.input["image"] == uploaded.urls["get"]


def test_run_sdxl_by_model_name_with_an_open_file(
    live: LiveServer, live_token: str, tmp_path: Path
) -> None:
    """The issue's own example: it answered 404 before there was a files API."""
    path = tmp_path / "in.png"
    noise_image(100, 77).save(path)
    client = make_client(live, live_token)
    with path.open("rb") as image:
        output = client.run(
            "stability-ai/sdxl",
            input={"prompt": "fox", "image": image, "num_inference_steps": 4},
        )
    assert_png_outputs(output, live, live_token, count=1, size=(96, 72))


def test_another_keys_upload_as_input_raises_a_clear_error(
    live: LiveServer, live_token: str, tmp_path: Path
) -> None:
    path = tmp_path / "in.png"
    noise_image(64, 64).save(path)
    theirs = make_client(live, live.make_token()).files.create(path)
    client = make_client(live, live_token)
    with pytest.raises(ReplicateError) as caught:
        client.run(IMG2IMG_REF, input={"prompt": "a fox", "image": theirs.urls["get"]})
    assert caught.value.status == 422
    assert f"input.image: file {theirs.id} is not one of this API key's files" in str(
        caught.value.detail
    )


def test_an_upload_over_the_cap_raises_replicate_error_413(
    tmp_path: Path, tiny_weights: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data", weights_dir=tiny_weights, files_max_bytes=1000)
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 200_000)
    with LiveServer(create_app(settings)) as server:
        client = make_client(server, server.make_token())
        with pytest.raises(ReplicateError) as caught:
            client.files.create(big)
        assert caught.value.status == 413
        assert caught.value.detail == "Files must be less than 1000 bytes in size."
        assert client.files.list() == []


def test_models_get_and_versions_get(live: LiveServer, live_token: str) -> None:
    client = make_client(live, live_token)
    model = client.models.get(SD_MODEL)
    assert (model.owner, model.name) == ("stability-ai", "stable-diffusion")
    assert model.latest_version is not None
    assert model.latest_version.id == SD_VERSION
    properties = model.latest_version.openapi_schema["components"]["schemas"]["Input"]["properties"]
    assert properties["prompt"]["type"] == "string"

    version = model.versions.get(SD_VERSION)
    assert version.id == SD_VERSION
    assert isinstance(version.cog_version, str)
    assert version.openapi_schema == model.latest_version.openapi_schema
    assert [v.id for v in model.versions.list()] == [SD_VERSION]


def _wait_for(check: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def test_run_keeps_polling_after_the_sync_wait_runs_out(live: LiveServer, live_token: str) -> None:
    """The sync reply runs out while the prediction is still queued: the server answers
    `starting`, and the client polls to the outputs instead of returning None."""
    control = make_client(live, live_token)
    # Occupies the only worker far longer than the 1 s wait (500 steps at 768 px); it is
    # canceled as soon as the sync reply below has come back.
    blocker = control.predictions.create(
        version=SD_VERSION,
        input={**FAST_SD_INPUT, "width": 768, "height": 768, "num_inference_steps": 500},
    )
    try:
        # Progress, as the client derives it from the tqdm lines in the logs.
        running = _wait_for(
            lambda: (p := control.predictions.get(blocker.id)).progress and p,
            "the blocker's progress",
        )
        assert running.status == "processing"
        assert running.progress.total == 500
        assert 1 <= running.progress.current < 500
        assert running.progress.percentage == pytest.approx(
            running.progress.current / 500, abs=0.01
        )

        sync_replies: list[dict[str, Any]] = []

        def on_response(response: httpx.Response) -> None:
            if response.request.method == "POST" and not sync_replies:
                response.read()
                sync_replies.append(response.json())
                control.predictions.cancel(blocker.id)

        client = make_client(live, live_token, event_hooks={"response": [on_response]})
        output = client.run(SD_REF, input=FAST_SD_INPUT, wait=1)
    finally:
        control.predictions.cancel(blocker.id)

    assert len(sync_replies) == 1
    assert sync_replies[0]["status"] == "starting"
    assert_png_outputs(output, live, live_token, count=1, size=(64, 64))
    assert control.predictions.get(blocker.id).status == "canceled"
    done = control.predictions.get(sync_replies[0]["id"])
    assert done.status == "succeeded"
    assert done.output == output


def test_a_failed_prediction_raises_model_error(tmp_path: Path) -> None:
    # A weights directory for the model that holds no pipeline: loading fails on the
    # worker, so the prediction is created, then fails.
    broken = tmp_path / "weights"
    (broken / "stability-ai__stable-diffusion").mkdir(parents=True)
    settings = Settings(data_dir=tmp_path / "data", weights_dir=broken, log_flush_interval=0.0)
    with LiveServer(create_app(settings)) as server:
        token = server.make_token()
        client = make_client(server, token, "/replicate")
        with pytest.raises(ModelError) as caught:
            client.run(SD_MODEL, input=FAST_SD_INPUT)
        prediction = caught.value.prediction
        assert prediction.status == "failed"
        assert prediction.error is not None
        assert "The weights of stability-ai/stable-diffusion are not available" in prediction.error
        assert client.predictions.get(prediction.id).status == "failed"


@pytest.mark.parametrize("token", ["r8_not-a-real-key", None], ids=["bad-token", "no-token"])
def test_a_bad_token_raises_replicate_error_401(live: LiveServer, token: str | None) -> None:
    client = make_client(live, token)
    with pytest.raises(ReplicateError) as on_run:
        client.run(SD_REF, input=FAST_SD_INPUT)
    assert on_run.value.status == 401
    with pytest.raises(ReplicateError) as on_get:
        client.models.get(SD_MODEL)
    assert on_get.value.status == 401
    assert on_get.value.title == "Unauthenticated"

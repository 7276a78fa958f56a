"""REPLIGATE_STORAGE=s3 over real HTTP: moto's S3 server on a loopback port stands in for
the bucket (any S3-compatible store, through REPLIGATE_S3_ENDPOINT_URL). Outputs and
uploads land in the bucket under the prefix; clients download them through /files/
(proxied) or straight from the bucket's public URL; retention and deletes remove them."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import replicate
from PIL import Image

from repligate.app import create_app
from repligate.events import OutputFile
from repligate.settings import Settings
from repligate.testing.fakes import ScriptedProvider
from repligate.testing.live_server import LiveServer
from tests.conftest import FAST_SD_INPUT, SD_REF
from tests.fake_app import fake_app
from tests.operator_helpers import lean_settings, png
from tests.s3_server import BUCKET, keys, s3_client, s3_endpoint, s3_object

__all__ = ["s3_endpoint"]  # the fixture, used by name
from tests.sd_family import IMG2IMG_REF, noise_image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PUBLIC_READ = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": "*",
            "Action": "s3:GetObject",
            "Resource": f"arn:aws:s3:::{BUCKET}/public/*",
        }
    ],
}


@pytest.fixture(scope="module")
def live(
    s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path
) -> Iterator[LiveServer]:
    """The real server with the real tiny SD pipelines, storing in S3 (proxied)."""
    data_dir = tmp_path_factory.mktemp("s3-live")
    settings = Settings(
        data_dir=data_dir,
        weights_dir=tiny_weights,
        log_flush_interval=0.0,
        public_base_url=None,
        concurrency_per_device=1,
        storage="s3",
        s3_bucket=BUCKET,
        s3_prefix="team/live/",
        s3_endpoint_url=s3_endpoint,
    )
    with LiveServer(create_app(settings)) as server:
        yield server


@pytest.fixture(autouse=True)
def _client_env(official_client_env: None) -> None:
    """Every test here runs the official client."""


def test_an_sd_output_lands_in_the_bucket_and_the_official_client_downloads_it(
    live: LiveServer, s3_endpoint: str
) -> None:
    token = live.make_token()
    client = replicate.Client(api_token=token, base_url=live.url)
    # replicate 1.0.7 hands http: output URLs back as strings (FileOutput is for https:).
    [url] = client.run(SD_REF, input={**FAST_SD_INPUT, "seed": 3})
    # Proxied: the output URL is the API's own /files/ URL, as with local storage.
    assert url.startswith(f"{live.url}/files/predictions/")
    key = "team/live/" + url.split("/files/", 1)[1]
    assert key in keys(s3_endpoint, "team/live/predictions/")
    stored, content_type = s3_object(s3_endpoint, key)
    assert content_type == "image/png"
    assert stored.startswith(PNG_MAGIC)
    # Nothing was written to the local disk.
    assert not live.container.settings.files_dir.exists()

    # Downloaded as the client does it: with its bearer token along.
    served = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert served.status_code == 200
    assert served.headers["content-type"] == "image/png"
    assert served.headers["content-length"] == str(len(stored))
    assert hashlib.sha256(served.content).digest() == hashlib.sha256(stored).digest()
    missing = httpx.get(url.replace(".png", "-gone.png"), timeout=30)
    assert missing.status_code == 404


def test_an_upload_lands_in_the_bucket_works_as_an_input_and_goes_when_deleted(
    live: LiveServer, s3_endpoint: str, tmp_path: Path
) -> None:
    token = live.make_token()
    client = replicate.Client(api_token=token, base_url=live.url)
    path = tmp_path / "in.png"
    noise_image(96, 64, seed=5).save(path)
    with path.open("rb") as image:
        [output] = client.run(
            IMG2IMG_REF,
            input={"prompt": "a fox", "image": image, "num_inference_steps": 2, "seed": 1},
        )
    picture = httpx.get(output, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    # img2img keeps the input's size: the uploaded picture, read back from S3, was the input.
    assert Image.open(io.BytesIO(picture.content)).size == (96, 64)
    [uploaded] = client.files.list()
    upload_keys = [k for k in keys(s3_endpoint, "team/live/uploads/") if uploaded.id in k]
    assert len(upload_keys) == 1
    stored, content_type = s3_object(s3_endpoint, upload_keys[0])
    assert stored == path.read_bytes()
    assert content_type == "image/png"
    # Served back through the files API, from the bucket.
    fetched = httpx.get(
        uploaded.urls["get"] + "/download", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert fetched.status_code == 200 and fetched.content == path.read_bytes()

    client.files.delete(uploaded.id)
    assert [k for k in keys(s3_endpoint, "team/live/uploads/") if uploaded.id in k] == []


def test_public_base_url_links_outputs_to_the_bucket_and_retention_removes_them(
    s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    picture = png(24, 16)
    provider = ScriptedProvider(returns=[OutputFile("out-0.png", picture, "image/png")])
    public = f"{s3_endpoint}/{BUCKET}"
    # What an operator does for public URLs: let anyone read the prefix.
    s3_client(s3_endpoint).put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(PUBLIC_READ))
    settings = lean_settings(
        tmp_path,
        monkeypatch,
        prediction_retention_seconds=3600,
        storage="s3",
        s3_bucket=BUCKET,
        s3_prefix="public",
        s3_endpoint_url=s3_endpoint,
        s3_public_base_url=public + "/",
    )
    with fake_app(settings, provider, inline=True) as app:
        created = app.create(body={"input": {"prompt": "a fox", "seed": 7}}).json()
        prediction = app.get(created["id"])
        assert prediction["status"] == "succeeded"
        [url] = prediction["output"]
        key = f"public/predictions/{created['id']}/out-0.png"
        assert url == f"{public}/{key}"
        assert s3_object(s3_endpoint, key) == (picture, "image/png")
        # Straight from the bucket, no API in between.
        fetched = httpx.get(url, timeout=30)
        assert fetched.status_code == 200 and fetched.content == picture

        app.clock.advance(3601)
        assert app.container.sweeper is not None
        assert app.container.sweeper.run_once().predictions_cleared == 1
        assert keys(s3_endpoint, f"public/predictions/{created['id']}/") == []
        assert httpx.get(url, timeout=30).status_code == 404


def test_large_outputs_stream_through_files_with_their_length(
    s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Over the size /files/ reads at once: sent in chunks, still with Content-Length.
    blob = bytes(range(256)) * (6 * 1024)  # 1.5 MiB
    provider = ScriptedProvider(returns=[OutputFile("out-0.wav", blob, "audio/wav")])
    settings = lean_settings(
        tmp_path,
        monkeypatch,
        storage="s3",
        s3_bucket=BUCKET,
        s3_prefix="big",
        s3_endpoint_url=s3_endpoint,
    )
    with fake_app(settings, provider, inline=True) as app:
        created = app.create().json()
        [url] = app.get(created["id"])["output"]
        assert "/files/predictions/" in url
        response = app.client.get(url)
        assert response.status_code == 200
        assert response.headers["content-length"] == str(len(blob))
        assert response.headers["content-type"].startswith("audio/")
        assert response.content == blob


def test_s3_without_a_bucket_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="REPLIGATE_S3_BUCKET"):
        create_app(Settings(data_dir=tmp_path / "data", storage="s3"))


def test_a_server_on_local_storage_never_imports_boto3(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from repligate.app import create_app\n"
        "from repligate.settings import Settings\n"
        f"create_app(Settings(data_dir={str(tmp_path / 'data')!r}))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    ran = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "[]"


def test_a_missing_bucket_is_a_clear_503_and_a_big_upload_still_413(
    s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = lean_settings(
        tmp_path,
        monkeypatch,
        storage="s3",
        s3_bucket="no-such-bucket",
        s3_endpoint_url=s3_endpoint,
        files_max_bytes=1000,
    )
    with fake_app(settings, ScriptedProvider(), inline=True) as app:
        got = app.client.get("/files/predictions/p1/out-0.png")
        assert got.status_code == 503
        assert got.json()["title"] == "Storage unavailable"
        assert got.json()["detail"].startswith("storage could not read an object: ")
        small = app.client.post(
            "/v1/files", files={"content": ("a.txt", b"hello", "text/plain")}, headers=app.auth
        )
        assert small.status_code == 503, small.text
        big = app.client.post(
            "/v1/files", files={"content": ("b.bin", b"x" * 5000, "text/plain")}, headers=app.auth
        )
        assert big.status_code == 413, big.text

"""File inputs: the fetcher (repligate.fetch) against a real HTTP server on 127.0.0.1, and
the API's create-time check. Downloads and their limits (size, time, compression),
redirects, images (bombs, pixel limits, EXIF), data URIs, the settings, and the API end to
end.

The server and its images live in tests.fetch_server; the address policy, name resolution
and pinning are in test_netguard, content-type detection in test_sniff.
"""

from __future__ import annotations

import base64
import io
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from repligate.app import create_app
from repligate.fetch import Fetcher, FetchRefused, check_reference
from repligate.settings import Settings
from tests.conftest import make_token
from tests.fetch_server import HINT, LOOPBACK, PNG, ZEROS_GZIP, local_server, png, refusal

IMG2IMG_VERSION = "15a3689ee13b0d2616e98820eca31d4c3abcd36672df6afce5cb6feb1d66087d"


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with local_server() as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def fetcher() -> Fetcher:
    return Fetcher(allowed_networks=LOOPBACK)


# --- downloading --------------------------------------------------------------------------


def test_fetches_a_png_and_sniffs_its_type(base: str, fetcher: Fetcher) -> None:
    fetched = fetcher.fetch(f"{base}/png", field="image")
    assert fetched.data == PNG
    assert fetched.content_type == "image/png"  # served as application/octet-stream
    image = fetched.image()
    assert image.size == (48, 32)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 0, 255)
    assert image.getpixel((47, 31)) == (10, 200, 30)


def test_unknown_bytes_keep_the_servers_type(base: str, fetcher: Fetcher) -> None:
    fetched = fetcher.fetch(f"{base}/text", field="mask")
    assert fetched.content_type == "text/plain"
    with pytest.raises(FetchRefused, match=r"^mask: the file is not an image .*text/plain"):
        fetched.image()


def test_a_server_error_is_a_refusal_naming_the_status(base: str, fetcher: Fetcher) -> None:
    assert (
        refusal(fetcher, f"{base}/missing") == f"image: the server answered 404 for {base}/missing"
    )


def test_a_closed_port_is_a_refusal(fetcher: Fetcher) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert refusal(fetcher, f"http://127.0.0.1:{port}/x").startswith(
        "image: could not connect to 127.0.0.1"
    )


def test_a_body_past_the_cap_is_cut_off(base: str) -> None:
    small = Fetcher(allowed_networks=LOOPBACK, max_bytes=1024 * 1024)
    assert refusal(small, f"{base}/huge") == "image: the file is larger than 1048576 bytes"


def test_a_declared_length_past_the_cap_is_refused_up_front(base: str, fetcher: Fetcher) -> None:
    assert refusal(fetcher, f"{base}/huge-declared") == (
        f"image: the server says the file is {10**12} bytes, more than {fetcher.max_bytes}"
    )


def test_a_trickling_server_is_cut_off_by_the_overall_deadline(base: str) -> None:
    hasty = Fetcher(allowed_networks=LOOPBACK, timeout=0.5)
    assert refusal(hasty, f"{base}/slow") == "image: downloading took longer than 0.5 seconds"


def test_a_silent_server_is_cut_off_by_the_overall_deadline(base: str) -> None:
    hasty = Fetcher(allowed_networks=LOOPBACK, timeout=0.3)
    assert refusal(hasty, f"{base}/stall") == "image: downloading took longer than 0.3 seconds"


def test_compression_the_server_adds_anyway_is_undone(base: str, fetcher: Fetcher) -> None:
    assert fetcher.fetch(f"{base}/gzipped-png", field="image").data == PNG


def test_a_compression_bomb_is_cut_off_at_the_cap(base: str) -> None:
    small = Fetcher(allowed_networks=LOOPBACK, max_bytes=1024 * 1024)
    assert len(ZEROS_GZIP) < 1024 * 1024
    assert refusal(small, f"{base}/gzip-bomb") == "image: the file is larger than 1048576 bytes"


def test_download_to_streams_to_disk_and_leaves_nothing_on_refusal(
    base: str, fetcher: Fetcher, tmp_path: Path
) -> None:
    target = tmp_path / "weights.bin"
    fetcher.download_to(f"{base}/png", target, field="weights")
    assert target.read_bytes() == PNG
    refused = tmp_path / "big.bin"
    with pytest.raises(FetchRefused, match=r"^weights: the file is larger than 1000 bytes$"):
        fetcher.download_to(f"{base}/huge", refused, field="weights", max_bytes=1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.bin"]
    with pytest.raises(FetchRefused, match=r"^weights: downloading took longer than 0.3 seconds$"):
        fetcher.download_to(f"{base}/slow", refused, field="weights", timeout=0.3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.bin"]


# --- redirects ----------------------------------------------------------------------------


def test_a_redirect_chain_is_followed(base: str, fetcher: Fetcher) -> None:
    assert fetcher.fetch(f"{base}/redirect/3", field="image").data == PNG


def test_too_many_redirects_are_refused(base: str) -> None:
    strict = Fetcher(allowed_networks=LOOPBACK, max_redirects=2)
    assert refusal(strict, f"{base}/redirect/3") == "image: more than 2 redirects"


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://10.0.0.1/secret", f"the address 10.0.0.1 is private; {HINT}"),
        (
            "http://169.254.169.254/latest/meta-data/",
            f"the address 169.254.169.254 is link-local (where cloud metadata services live); "
            f"{HINT}",
        ),
        (
            "http://metadata.google.internal/computeMetadata/v1/",
            f"metadata.google.internal is a cloud metadata service; {HINT}",
        ),
        ("ftp://example.com/file.png", "must be an http(s) URL or a data: URI (got ftp:)"),
    ],
)
def test_every_redirect_hop_is_checked_again(
    base: str, fetcher: Fetcher, target: str, reason: str
) -> None:
    # The first hop (loopback) is allowed; the second is refused before any connection.
    assert refusal(fetcher, f"{base}/redirect-to?url={target}") == (
        f"image: redirected to {target}: {reason}"
    )


# --- images -------------------------------------------------------------------------------


def test_an_image_bomb_is_refused(base: str, fetcher: Fetcher) -> None:
    fetched = fetcher.fetch(f"{base}/bomb.png", field="image")
    assert len(fetched.data) < 1024 * 1024
    with pytest.raises(FetchRefused) as caught:
        fetched.image()
    # 400 million pixels: past Pillow's own cap, yet the message quotes ours.
    assert str(caught.value) == (
        "image: the image is 400000000 pixels, more than the limit of 64000000 pixels "
        "(REPLIGATE_MAX_IMAGE_PIXELS)"
    )


def test_a_limit_above_pillows_cap_says_so(base: str) -> None:
    roomy = Fetcher(allowed_networks=LOOPBACK, max_pixels=500_000_000)
    with pytest.raises(FetchRefused) as caught:
        roomy.fetch(f"{base}/bomb.png", field="image").image()
    assert str(caught.value) == (
        "image: the image is 400000000 pixels, more than the limit of 500000000 pixels "
        "(REPLIGATE_MAX_IMAGE_PIXELS); Pillow itself refuses more than 178956970 pixels"
    )


def test_the_pixel_limit_is_per_fetcher(base: str) -> None:
    tight = Fetcher(allowed_networks=LOOPBACK, max_pixels=1000)
    with pytest.raises(FetchRefused) as caught:
        tight.fetch(f"{base}/png", field="image").image()
    assert str(caught.value) == (
        "image: the image is 48x32, more than the limit of 1000 pixels (REPLIGATE_MAX_IMAGE_PIXELS)"
    )


def test_exif_orientation_is_applied_on_request(base: str, fetcher: Fetcher) -> None:
    fetched = fetcher.fetch(f"{base}/exif.jpg", field="image")
    assert fetched.content_type == "image/jpeg"
    upright = fetched.image()
    assert upright.size == (20, 40)
    # Rotated 90° clockwise: the red left half is now on top.
    top, bottom = upright.getpixel((10, 5)), upright.getpixel((10, 35))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60
    assert fetched.image(exif_transpose=False).size == (40, 20)
    assert fetched.image(mode=None).mode == "RGB"


# --- data URIs ----------------------------------------------------------------------------


def test_data_uris_decode_leniently_in_form(fetcher: Fetcher) -> None:
    encoded = base64.b64encode(PNG).decode()
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    for value in (
        f"data:image/png;base64,{encoded}",
        f"data:application/octet-stream;base64,{wrapped}",
        f"data:;base64,{base64.urlsafe_b64encode(PNG).decode().rstrip('=')}",
    ):
        fetched = fetcher.fetch(value, field="image")
        assert fetched.data == PNG
        assert fetched.content_type == "image/png"
    plain = fetcher.fetch("data:,hello%20world", field="prompt_file")
    assert (plain.data, plain.content_type) == (b"hello world", "text/plain")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("data:image/png;base64", "not a valid data URI (expected data:[<type>][;base64],<data>)"),
        ("data:image/png;base64,iVBORw0KGgo*&^", "the data URI's base64 is not valid"),
        ("data:image/png;base64,iVBORw0KG", "the data URI's base64 is not valid (truncated)"),
        ("ftp://example.com/cat.png", "must be an http(s) URL or a data: URI"),
        ("/home/me/cat.png", "must be an http(s) URL or a data: URI"),
        ("http://", "the URL has no host"),
    ],
)
def test_malformed_references_are_refused_without_network(value: str, reason: str) -> None:
    assert check_reference(value) == reason
    assert refusal(Fetcher(), value, field="mask") == f"mask: {reason}"


def test_an_oversized_data_uri_is_refused(fetcher: Fetcher) -> None:
    value = "data:application/octet-stream;base64," + base64.b64encode(b"x" * 4000).decode()
    assert check_reference(value) is None  # no size without a limit
    assert check_reference(value, max_bytes=1000) == (
        "the data URI holds about 4000 bytes, more than 1000"
    )
    assert refusal(Fetcher(max_bytes=1000), value) == (
        "image: the data URI holds about 4000 bytes, more than 1000"
    )


# --- settings and the API -----------------------------------------------------------------


def test_the_fetcher_follows_the_settings(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLIGATE_FETCH_ALLOWED_NETWORKS", '["127.0.0.0/8"]')
    monkeypatch.setenv("REPLIGATE_FETCH_MAX_BYTES", "1000")
    monkeypatch.setenv("REPLIGATE_MAX_IMAGE_PIXELS", "100")
    fetcher = Fetcher.from_settings(Settings())
    assert refusal(fetcher, f"{base}/huge") == "image: the file is larger than 1000 bytes"
    small = fetcher.fetch(f"data:;base64,{base64.b64encode(png((16, 16))).decode()}", field="image")
    with pytest.raises(FetchRefused, match=r"^image: the image is 16x16, more than .* 100 pixels"):
        small.image()
    assert Fetcher.from_settings(Settings()).fetch(f"{base}/text", field="x").data == (
        b"just some words"
    )
    monkeypatch.setenv("REPLIGATE_FETCH_ALLOWED_NETWORKS", "[]")
    assert "is loopback" in refusal(Fetcher.from_settings(Settings()), f"{base}/text")
    monkeypatch.setenv("REPLIGATE_FETCH_ALLOW_PRIVATE", "true")
    assert Fetcher.from_settings(Settings()).fetch(f"{base}/text", field="x").content_type == (
        "text/plain"
    )


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """A server without weights: these requests never reach a model."""
    settings = Settings(data_dir=tmp_path / "data", log_flush_interval=0.0)
    with TestClient(create_app(settings)) as client:
        yield client, {"Authorization": f"Bearer {make_token(client)}"}


def _create(api: tuple[TestClient, dict[str, str]], image: str) -> Any:
    client, auth = api
    return client.post(
        "/v1/predictions",
        json={"version": IMG2IMG_VERSION, "input": {"image": image, "prompt": "a fox"}},
        headers=auth,
    )


@pytest.mark.parametrize(
    ("image", "description"),
    [
        ("data:image/png;base64,not*base64!", "the data URI's base64 is not valid"),
        ("data:image/png", "not a valid data URI (expected data:[<type>][;base64],<data>)"),
        ("file:///etc/passwd", "must be an http(s) URL or a data: URI"),
    ],
)
def test_a_malformed_file_input_is_a_422_at_create_time(
    api: tuple[TestClient, dict[str, str]], image: str, description: str
) -> None:
    response = _create(api, image)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["title"] == "Input validation failed"
    assert body["invalid_fields"] == [
        {"type": "format", "field": "input.image", "description": description}
    ]
    assert f"input.image: {description}" in body["detail"]


def test_an_address_is_not_judged_at_create_time(api: tuple[TestClient, dict[str, str]]) -> None:
    # The operator may allow private addresses; create time does not know the settings, so
    # this is judged when the file is fetched, not as a format error.
    response = _create(api, "http://10.0.0.5/cat.png")
    fields = response.json().get("invalid_fields") or []
    assert not [f for f in fields if f["field"] == "input.image"], response.text


def _img2img_over_http(settings: Settings, image_url: str) -> dict[str, Any]:
    with TestClient(create_app(settings)) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        response = client.post(
            "/replicate/v1/predictions",
            json={
                "version": IMG2IMG_VERSION,
                "input": {"image": image_url, "prompt": "a fox", "num_inference_steps": 2},
            },
            headers=auth,
        )
        body: dict[str, Any] = response.json()
        if body["status"] == "succeeded":
            picture = client.get(body["output"][0])
            body["_size"] = Image.open(io.BytesIO(picture.content)).size
        return body


def test_a_refused_fetch_fails_the_prediction_naming_the_input(
    base: str, tmp_path: Path, tiny_weights: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data", weights_dir=tiny_weights)
    body = _img2img_over_http(settings, f"{base}/png")
    assert body["status"] == "failed"
    assert body["error"].startswith("image: the address 127.0.0.1 is loopback"), body["error"]
    assert HINT in body["error"]


def test_an_operator_may_allow_loopback_inputs(
    base: str, tmp_path: Path, tiny_weights: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", weights_dir=tiny_weights, fetch_allow_private=True
    )
    body = _img2img_over_http(settings, f"{base}/png")
    assert body["status"] == "succeeded", body["error"]
    # img2img keeps the input's size, floored to a multiple of 32: 48x32 gives 32x32.
    assert body["_size"] == (32, 32)


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/huge", r"image: the file is larger than 1048576 bytes"),
        ("/slow", r"image: downloading took longer than 0.5 seconds"),
        ("/redirect-to?url=http://10.0.0.1/x.png", r"image: redirected to http://10\.0\.0\.1/"),
        ("/redirect-to?url=http://169.254.169.254/", r"image: redirected to .*link-local"),
        ("/text", r"image: the file is not an image"),
        ("/bomb.png", r"image: the image is 400000000 pixels, more than the limit of 64000000 "),
    ],
)
def test_every_fetch_refusal_fails_the_prediction_with_its_reason(
    base: str, tmp_path: Path, tiny_weights: Path, path: str, error: str
) -> None:
    # Loopback (the test server) is allowed; every other non-public address is not.
    settings = Settings(
        data_dir=tmp_path / "data",
        weights_dir=tiny_weights,
        fetch_allowed_networks=LOOPBACK,
        fetch_max_bytes=1024 * 1024,
        fetch_timeout_seconds=0.5,
    )
    body = _img2img_over_http(settings, f"{base}{path}")
    assert body["status"] == "failed"
    assert re.match(error, body["error"]), body["error"]
    assert body["output"] is None and body["data"] == []

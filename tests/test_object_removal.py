"""sujaykhandekar/object-removal through the HTTP API, on tiny random weights in the
published files' layout.

The mask a prediction uses is computed here the same way, from the same tiny DeepLab
(runners/object_removal.py's steps), so the tests can say which output pixels must be the
input's own and which must be new."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import replicate
import torch
from fastapi.testclient import TestClient
from PIL import Image

from repligate.app import create_app
from repligate.runners.object_removal import CLASSES, load_networks, masked_square, segment
from repligate.settings import Settings
from repligate.testing.live_server import LiveServer
from tests.api_helpers import app_client, assert_problem
from tests.api_helpers import image as fetch_image
from tests.conftest import make_token
from tests.fetch_server import local_server
from tests.sd_family import data_uri, noise_image, predict

KEY = "sujaykhandekar__object-removal"
REF = (
    "sujaykhandekar/object-removal:153b0087c2576ad30d8cbddb35275b387d1a6bf986bda5499948f843f6460faf"
)
PICTURE = noise_image(64, 48, seed=7)


@pytest.fixture(scope="module")
def networks(tiny_weights: Path) -> Any:
    return load_networks(tiny_weights / KEY)


@pytest.fixture(scope="module")
def labels(networks: Any, fixed_torch_threads: int) -> np.ndarray:
    torch.set_num_threads(fixed_torch_threads)
    with torch.inference_mode():
        return segment(networks["segmentation"], PICTURE, "cpu")


def classes_by_share(labels: np.ndarray) -> list[str]:
    """Names of the classes the tiny DeepLab finds in PICTURE, each under half of it,
    largest first."""
    found, counts = np.unique(labels, return_counts=True)
    share = counts / labels.size
    order = np.argsort(-share)
    return [CLASSES[found[i]] for i in order if share[i] < 0.5]


def removed(client: TestClient, auth: dict[str, str], objects: str, **inputs: Any) -> Any:
    body = predict(
        client,
        auth,
        REF,
        {"image_path": data_uri(PICTURE), "objects_to_remove": objects, **inputs},
    )
    assert body["status"] == "succeeded", body["error"]
    # One file, as the original's Output (a single URI), named as the original names it.
    assert isinstance(body["output"], str) and body["output"].endswith("/output.png")
    return fetch_image(client, body["output"])


def assert_kept_outside_and_changed_inside(
    result: Image.Image, labels: np.ndarray, names: list[str]
) -> np.ndarray:
    assert result.format == "PNG" and result.mode == "RGB" and result.size == (256, 256)
    picture, mask = masked_square(PICTURE, labels, [CLASSES.index(name) for name in names])
    inside = mask == 255
    assert 0.02 < inside.mean() < 0.9  # a real mask: some pixels in, some out
    pixels = np.asarray(result)
    assert np.array_equal(pixels[~inside], picture[~inside])
    # Inside, the generator's pixels: not the white paint, not the input's own.
    original = np.asarray(PICTURE.resize((256, 256), Image.Resampling.LANCZOS))
    assert (pixels[inside] != picture[inside]).mean() > 0.9
    assert (pixels[inside] != original[inside]).mean() > 0.9
    return inside


def weights_bytes(directory: Path) -> int:
    """Bytes of every tensor in the three weights files."""
    total = 0
    for path in directory.glob("*.pth"):
        state = torch.load(path, weights_only=True)
        tensors = state.get("generator", state)
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    return total


def test_the_named_class_is_painted_out_and_the_rest_kept(
    client: TestClient, auth: dict[str, str], labels: np.ndarray, tiny_weights: Path
) -> None:
    name = classes_by_share(labels)[0]
    assert_kept_outside_and_changed_inside(removed(client, auth, name), labels, [name])
    # Loaded once into the pipeline cache, where its memory counts.
    assert "sujaykhandekar/object-removal" in client.get("/health").json()["models_loaded"]
    held = client.app.state.container.provider.env().pipelines.held_bytes()  # type: ignore[attr-defined]
    assert held == weights_bytes(tiny_weights / KEY)


def test_several_classes_at_once_remove_their_union(
    client: TestClient, auth: dict[str, str], labels: np.ndarray
) -> None:
    first, second = classes_by_share(labels)[:2]
    both = assert_kept_outside_and_changed_inside(
        removed(client, auth, f"{first},{second}"), labels, [first, second]
    )
    _, alone = masked_square(PICTURE, labels, [CLASSES.index(first)])
    assert both.sum() > (alone == 255).sum()


@pytest.mark.parametrize(
    ("objects", "unknown"),
    [
        ("Person", "'Person'"),  # case-sensitive, as the original
        ("person, car", "' car'"),  # no stripping around commas, as the original
        ("person,unicorn", "'unicorn'"),
        ("", "''"),
    ],
)
def test_unknown_class_names_are_refused_at_create_listing_the_valid_ones(
    client: TestClient, auth: dict[str, str], objects: str, unknown: str
) -> None:
    response = client.post(
        "/v1/predictions",
        json={
            "version": REF,
            "input": {"image_path": data_uri(PICTURE), "objects_to_remove": objects},
        },
        headers=auth,
    )
    problem = assert_problem(response, 422)
    [field] = problem["invalid_fields"]
    assert field["field"] == "input.objects_to_remove"
    assert unknown in field["description"]
    assert "Background, Aeroplane, bicycle" in field["description"]
    assert "tv/monitor" in field["description"]
    # Refused before anything ran: no prediction was made.
    assert client.get("/v1/predictions", headers=auth).json()["results"] == []


def truncated_png_uri() -> str:
    """PICTURE's PNG cut after 200 bytes: its header (64x48) reads, its pixels do not."""
    buffer = io.BytesIO()
    PICTURE.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()[:200]).decode()


@pytest.mark.parametrize(
    ("image_path", "error"),
    [
        ("data:image/png;base64,bm90IGFuIGltYWdl", "image_path: the file is not an image"),
        (truncated_png_uri(), "image_path: the file is not an image"),
    ],
    ids=["not-an-image", "truncated"],
)
def test_a_file_that_is_not_a_whole_image_fails_the_prediction(
    client: TestClient, auth: dict[str, str], image_path: str, error: str
) -> None:
    body = predict(client, auth, REF, {"image_path": image_path, "objects_to_remove": "cat"})
    assert body["status"] == "failed"
    assert body["error"].startswith(error), body["error"]


def test_an_image_over_the_pixel_limit_fails_the_prediction(
    settings: Settings, auth: dict[str, str]
) -> None:
    with app_client(settings, max_image_pixels=1000) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        body = predict(client, auth, REF, {"image_path": data_uri(PICTURE)})
    assert body["status"] == "failed"
    assert body["error"] == (
        "image_path: the image is 64x48, more than the limit of 1000 pixels "
        "(REPLIGATE_MAX_IMAGE_PIXELS)"
    )


def test_missing_weights_name_the_files_and_where_they_go(
    settings: Settings, tmp_path: Path
) -> None:
    empty = tmp_path / "no-weights"
    (empty / KEY).mkdir(parents=True)
    (empty / KEY / "EdgeModel_gen.pth").write_bytes(b"")
    with app_client(settings, weights_dir=empty) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        body = predict(client, auth, REF, {"image_path": data_uri(PICTURE)})
    assert body["status"] == "failed"
    error = body["error"]
    assert "missing deeplabv3_resnet101_coco-586e9e4e.pth, InpaintingModel_gen.pth" in error
    assert f"Put them in {empty / KEY}/" in error


def test_a_weights_file_of_another_network_is_a_clear_error(
    settings: Settings, tmp_path: Path, tiny_weights: Path
) -> None:
    mixed = tmp_path / "mixed" / KEY
    mixed.mkdir(parents=True)
    for entry in (tiny_weights / KEY).iterdir():
        (mixed / entry.name).symlink_to(entry)
    (mixed / "EdgeModel_gen.pth").unlink()
    (mixed / "EdgeModel_gen.pth").symlink_to(tiny_weights / KEY / "InpaintingModel_gen.pth")
    with app_client(settings, weights_dir=mixed.parent) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        body = predict(client, auth, REF, {"image_path": data_uri(PICTURE)})
    assert body["status"] == "failed"
    assert "EdgeModel_gen.pth is not usable: not EdgeGenerator weights" in body["error"]


def test_an_image_by_url_is_fetched(settings: Settings, labels: np.ndarray) -> None:
    # The test server is on loopback, which an operator must allow.
    with local_server() as port, app_client(settings, fetch_allow_private=True) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        body = predict(
            client,
            auth,
            REF,
            {"image_path": f"http://127.0.0.1:{port}/png", "objects_to_remove": "cat"},
        )
        assert body["status"] == "succeeded", body["error"]
        assert fetch_image(client, body["output"]).size == (256, 256)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> Iterator[LiveServer]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("live-data"),
        weights_dir=tiny_weights,
        log_flush_interval=0.0,
        public_base_url=None,
    )
    with LiveServer(create_app(settings)) as server:
        yield server


def test_the_official_client_with_an_open_file(
    live: LiveServer, tmp_path: Path, labels: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    monkeypatch.setenv("REPLICATE_POLL_INTERVAL", "0.05")
    token = live.make_token()
    path = tmp_path / "street.png"
    PICTURE.save(path)
    name = classes_by_share(labels)[0]
    client = replicate.Client(api_token=token, base_url=live.url)
    with path.open("rb") as handle:
        output = client.run(REF, input={"image_path": handle, "objects_to_remove": name})
    assert isinstance(output, str)
    response = httpx.get(output, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    result = Image.open(io.BytesIO(response.content))
    result.load()
    assert_kept_outside_and_changed_inside(result, labels, [name])
    [uploaded] = client.files.list()
    assert uploaded.name == "street.png"


def test_without_scikit_image_it_is_refused_at_create_naming_what_to_install(
    client: TestClient, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "skimage" else real_find_spec(name, *args),
    )
    response = client.post(
        "/v1/predictions",
        json={"version": REF, "input": {"image_path": data_uri(PICTURE)}},
        headers=auth,
    )
    problem = assert_problem(response, 422)
    assert problem["detail"] == (
        "sujaykhandekar/object-removal runs locally with torch, skimage, and this install "
        "lacks skimage: install repligate with its `local` extra (pip install "
        "'repligate[local]', or make install)."
    )

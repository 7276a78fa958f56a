"""Uploaded files as model inputs, and large data-URI inputs stored as files, through the
HTTP API with stable-diffusion-img2img on tiny weights."""

from __future__ import annotations

import base64
import io
import re
from typing import Any

from fastapi.testclient import TestClient
from PIL import Image

from repligate.app import build_container, create_app
from repligate.settings import Settings
from repligate.testing.fakes_storage import InMemoryStorage
from tests.api_helpers import app_client, assert_problem, download, finished
from tests.conftest import FAST_SD_INPUT, SD_REF, make_token
from tests.sd_family import IMG2IMG_REF, data_uri, noise_image, output_images, predict

FILE_URL = re.compile(r"^http://testserver/replicate/v1/files/[a-z2-7]{26}$")


def png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    noise_image(width, height).save(buffer, format="PNG")
    return buffer.getvalue()


def upload_png(client: TestClient, auth: dict[str, str], width: int, height: int) -> Any:
    response = client.post(
        "/v1/files",
        files={"content": ("in.png", png_bytes(width, height), "image/png")},
        headers=auth,
    )
    assert response.status_code == 201, response.text
    return response.json()


def img2img_input(image: str) -> dict[str, Any]:
    return {"prompt": "a harbour", "image": image, "num_inference_steps": 4, "seed": 3}


def create(client: TestClient, auth: dict[str, str], image: str) -> Any:
    return client.post(
        "/v1/predictions",
        json={"version": IMG2IMG_REF, "input": img2img_input(image)},
        headers=auth,
    )


def test_an_uploaded_file_is_a_model_input(client: TestClient, auth: dict[str, str]) -> None:
    uploaded = upload_png(client, auth, 100, 76)
    body = predict(client, auth, IMG2IMG_REF, img2img_input(uploaded["urls"]["get"]))
    # img2img keeps the input's size (floored to 32): the uploaded picture was used.
    assert [picture.size for picture in output_images(client, body)] == [(96, 64)]
    assert body["input"]["image"] == uploaded["urls"]["get"]


def test_a_file_url_on_another_host_name_is_still_read_from_storage(
    client: TestClient, auth: dict[str, str]
) -> None:
    """Reached through a proxy or by another name: the URL's id is what counts, and the
    loopback host is never fetched (it would be refused as a private address)."""
    uploaded = upload_png(client, auth, 64, 96)
    for url in (
        f"http://127.0.0.1:1/v1/files/{uploaded['id']}",
        f"https://api.example.test/replicate/v1/files/{uploaded['id']}/download",
    ):
        body = predict(client, auth, IMG2IMG_REF, img2img_input(url))
        assert [picture.size for picture in output_images(client, body)] == [(64, 96)]


def test_another_keys_upload_is_refused_at_create(client: TestClient, auth: dict[str, str]) -> None:
    theirs = upload_png(client, {"Authorization": f"Bearer {make_token(client, 'b')}"}, 64, 64)
    body = assert_problem(create(client, auth, theirs["urls"]["get"]), 422)
    [field] = body["invalid_fields"]
    assert field["field"] == "input.image"
    assert f"file {theirs['id']} is not one of this API key's files" in field["description"]
    assert client.get("/v1/predictions", headers=auth).json()["results"] == []


def test_a_deleted_or_unknown_upload_is_refused_at_create(
    client: TestClient, auth: dict[str, str]
) -> None:
    uploaded = upload_png(client, auth, 64, 64)
    assert client.delete(uploaded["urls"]["get"], headers=auth).status_code == 204
    body = assert_problem(create(client, auth, uploaded["urls"]["get"]), 422)
    assert body["invalid_fields"][0]["description"] == f"file {uploaded['id']} was deleted"
    # An id this server never gave out, on the host the request came in on.
    unknown = "http://testserver/v1/files/" + "a" * 26
    body = assert_problem(create(client, auth, unknown), 422)
    assert "is not one of this API key's files" in body["invalid_fields"][0]["description"]


def test_a_file_deleted_before_the_run_fails_the_prediction_with_the_reason(
    client: TestClient, auth: dict[str, str]
) -> None:
    uploaded = upload_png(client, auth, 64, 64)
    # The only worker is busy with a long prediction while ours waits in the queue.
    slow = {**FAST_SD_INPUT, "width": 512, "height": 512, "num_inference_steps": 500}
    blocker = client.post(
        "/v1/predictions", json={"version": SD_REF, "input": slow}, headers=auth
    ).json()
    try:
        queued = create(client, auth, uploaded["urls"]["get"])
        assert queued.status_code == 201, queued.text
        assert client.delete(uploaded["urls"]["get"], headers=auth).status_code == 204
    finally:
        client.post(f"/v1/predictions/{blocker['id']}/cancel", headers=auth)
    body = finished(client, queued.json()["urls"]["get"], auth)
    assert body["status"] == "failed"
    assert body["error"] == f"image: file {uploaded['id']} was deleted"


def test_a_large_data_uri_becomes_a_file_and_the_row_keeps_its_url(
    client: TestClient, auth: dict[str, str]
) -> None:
    picture = png_bytes(288, 288)
    image = "data:image/png;base64," + base64.b64encode(picture).decode()
    assert len(image) > 256 * 1024  # over the default bound
    small = data_uri(noise_image(64, 64))
    assert len(small) < 256 * 1024

    large_body = predict(client, auth, IMG2IMG_REF, img2img_input(image))
    small_body = predict(client, auth, IMG2IMG_REF, img2img_input(small))
    assert [p.size for p in output_images(client, large_body)] == [(288, 288)]
    assert [p.size for p in output_images(client, small_body)] == [(64, 64)]

    url = large_body["input"]["image"]
    assert FILE_URL.match(url), url
    assert small_body["input"]["image"] == small  # small ones stay as sent
    stored = client.get(url, headers=auth).json()
    assert (stored["name"], stored["content_type"], stored["size"]) == (
        "image.png",
        "image/png",
        len(picture),
    )
    assert client.get(f"{url}/download", headers=auth).content == picture
    fetched = client.get(large_body["urls"]["get"], headers=auth).json()
    assert fetched["input"]["image"] == url

    listing = client.get("/v1/predictions", headers=auth)
    assert [p["id"] for p in listing.json()["results"]] == [small_body["id"], large_body["id"]]
    # The page holds a URL, not the 330 kB data URI.
    assert len(listing.content) < 40_000


def test_the_data_uri_bound_is_a_setting(settings: Settings) -> None:
    small = data_uri(noise_image(64, 64))
    with app_client(settings, inline_data_uri_max_bytes=1024) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        body = predict(client, auth, IMG2IMG_REF, img2img_input(small))
        assert body["status"] == "succeeded", body["error"]
        assert FILE_URL.match(body["input"]["image"])
        data = download(client, body["output"][0])
        assert Image.open(io.BytesIO(data)).size == (64, 64)
        files = client.get("/v1/files", headers=auth).json()["results"]
        assert [f["id"] for f in files] == [body["input"]["image"].rsplit("/", 1)[-1]]


def test_uploads_inputs_and_outputs_run_on_the_in_memory_storage(settings: Settings) -> None:
    """No route or service knows which backend it has: the fake serves it all."""
    storage = InMemoryStorage()
    with TestClient(create_app(settings, build_container(settings, storage=storage))) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        uploaded = upload_png(client, auth, 64, 96)
        assert client.get(uploaded["urls"]["download"]).content == png_bytes(64, 96)
        body = predict(client, auth, IMG2IMG_REF, img2img_input(uploaded["urls"]["get"]))
        assert [picture.size for picture in output_images(client, body)] == [(64, 96)]
        assert [k.split("/")[0] for k in storage.list_keys()] == ["predictions", "uploads"]
        assert client.get("/files/predictions/nothing.png").status_code == 404
    assert not settings.files_dir.exists()

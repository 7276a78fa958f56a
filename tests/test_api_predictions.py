"""Creating predictions over HTTP: the seed's curl body, both prefixes and their waiting
rules, every way to name a version, waits that run out, cancel, seeds and outputs."""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient

from tests.api_helpers import download, finished, image, poll, sync_outcome
from tests.conftest import FAST_SD_INPUT, SD_REF, SD_VERSION

# The seed document's curl body, verbatim.
SEED_BODY: dict[str, Any] = {
    "version": "stability-ai/stable-diffusion:ac732df83cea7fff18b8472768c88ad041fa750ff7682a21affe81863cbe77e4",  # noqa: E501
    "input": {
        "width": 768,
        "height": 768,
        "prompt": "an astronaut riding a horse on mars, hd, dramatic lighting",
        "scheduler": "K_EULER",
        "num_outputs": 1,
        "guidance_scale": 7.5,
        "num_inference_steps": 50,
    },
}
# Slow enough on the tiny weights (seconds) that a 1 s wait or a cancel lands mid-run.
SLOW_SD_INPUT = {**FAST_SD_INPUT, "width": 768, "height": 768, "num_inference_steps": 30}
# Minutes of work if it ran to the end: longer than any poll here waits, so a cancel that
# did not stop the worker fails the test instead of only slowing it down.
VERY_SLOW_SD_INPUT = {
    **FAST_SD_INPUT,
    "width": 1024,
    "height": 1024,
    "num_outputs": 4,
    "num_inference_steps": 500,
}


def _create(
    client: TestClient,
    auth: dict[str, str],
    input_: dict[str, Any],
    path: str = "/v1/predictions",
    prefer: str | None = None,
    version: str = SD_REF,
) -> Any:
    headers = {**auth, **({"Prefer": prefer} if prefer else {})}
    return client.post(path, json={"version": version, "input": input_}, headers=headers)


def _run(client: TestClient, auth: dict[str, str], input_: dict[str, Any]) -> dict[str, Any]:
    response = _create(client, auth, input_, prefer="wait")
    body = sync_outcome(client, response, auth, finished_code=201)
    assert body["status"] == "succeeded", body
    return body


def test_seed_curl_body_answers_with_a_768_png(client: TestClient, auth: dict[str, str]) -> None:
    response = client.post("/replicate/v1/predictions", json=SEED_BODY, headers=auth)
    # Seconds of work when idle: a busy machine may outlast the 60 s wait (then polled).
    body = sync_outcome(client, response, auth, finished_code=200)
    assert body["status"] == "succeeded"
    assert isinstance(body["created"], int) and body["created"] > 1_600_000_000
    assert len(body["data"]) == 1
    picture = image(client, body["data"][0]["url"])
    assert picture.format == "PNG"
    assert picture.size == (768, 768)
    assert picture.mode == "RGB"
    assert body["output"] == [body["data"][0]["url"]]


def test_v1_without_prefer_answers_at_once_then_polls_to_success(
    client: TestClient, auth: dict[str, str]
) -> None:
    response = _create(client, auth, FAST_SD_INPUT)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] in ("starting", "processing")
    assert body["output"] is None and body["data"] == []
    assert response.headers["location"] == body["urls"]["get"]
    assert body["urls"]["get"].endswith(f"/v1/predictions/{body['id']}")
    assert "/replicate/" not in body["urls"]["get"]
    done = finished(client, response.headers["location"], auth)
    assert done["status"] == "succeeded"
    assert done["output"][0].endswith("/out-0.png")
    assert done["metrics"]["predict_time"] > 0
    assert done["started_at"] and done["completed_at"]


def test_v1_with_prefer_wait_answers_201_finished(client: TestClient, auth: dict[str, str]) -> None:
    response = _create(client, auth, FAST_SD_INPUT, prefer="wait")
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "succeeded"
    assert response.headers["preference-applied"] == "wait=60"


def test_replicate_prefix_with_respond_async_does_not_wait(
    client: TestClient, auth: dict[str, str]
) -> None:
    # Loading the pipeline alone outlasts the reply; the run itself is kept short.
    input_ = {**SLOW_SD_INPUT, "num_inference_steps": 10}
    response = _create(
        client, auth, input_, path="/replicate/v1/predictions", prefer="respond-async"
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] in ("starting", "processing")
    assert body["urls"]["get"].endswith(f"/replicate/v1/predictions/{body['id']}")
    assert finished(client, body["urls"]["get"], auth)["status"] == "succeeded"


def test_every_way_of_naming_the_version(client: TestClient, auth: dict[str, str]) -> None:
    for version in (SD_VERSION, SD_REF, "stability-ai/stable-diffusion"):
        response = _create(client, auth, FAST_SD_INPUT, prefer="wait", version=version)
        assert response.status_code == 201, (version, response.text)
        body = response.json()
        assert body["status"] == "succeeded"
        assert body["version"] == SD_VERSION
        assert body["model"] == "stability-ai/stable-diffusion"


def test_model_route_creates_a_prediction(client: TestClient, auth: dict[str, str]) -> None:
    response = client.post(
        "/v1/models/stability-ai/stable-diffusion/predictions",
        json={"input": FAST_SD_INPUT},
        headers={**auth, "Prefer": "wait=30"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "succeeded"
    assert body["version"] == SD_VERSION
    assert body["input"] == FAST_SD_INPUT


def test_a_wait_that_runs_out_says_starting_and_the_run_finishes_later(
    client: TestClient, auth: dict[str, str]
) -> None:
    response = _create(client, auth, SLOW_SD_INPUT, prefer="wait=1")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "starting"
    assert body["output"] is None
    assert response.headers["preference-applied"] == "wait=1"
    done = finished(client, body["urls"]["get"], auth)
    assert done["status"] == "succeeded"
    assert len(done["output"]) == 1


def test_cancel_mid_run_stops_it_and_frees_the_worker(
    client: TestClient, auth: dict[str, str]
) -> None:
    created = _create(client, auth, VERY_SLOW_SD_INPUT).json()
    url = created["urls"]["get"]
    poll(client, url, auth, lambda body: "%|" in (body["logs"] or ""))
    response = client.post(created["urls"]["cancel"], headers=auth)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "canceled"

    # The worker notices at its next step; the status stays canceled once it has.
    fast = _run(client, auth, FAST_SD_INPUT)
    assert len(fast["output"]) == 1
    after = client.get(url, headers=auth).json()
    assert after["status"] == "canceled"
    assert after["output"] is None and after["data"] == []
    assert client.get(f"/files/predictions/{created['id']}/out-0.png").status_code == 404
    assert after["completed_at"] is not None
    # Canceling again is harmless and changes nothing.
    again = client.post(created["urls"]["cancel"], headers=auth)
    assert again.status_code == 200 and again.json()["status"] == "canceled"
    listed = client.get("/v1/predictions", headers=auth).json()["results"]
    assert {p["id"]: p["status"] for p in listed}[created["id"]] == "canceled"


def test_same_seed_same_png_and_another_seed_other_pixels(
    client: TestClient, auth: dict[str, str]
) -> None:
    first = _run(client, auth, {**FAST_SD_INPUT, "seed": 1234})
    second = _run(client, auth, {**FAST_SD_INPUT, "seed": 1234})
    other = _run(client, auth, {**FAST_SD_INPUT, "seed": 4321})
    first_bytes = download(client, first["output"][0])
    assert first_bytes == download(client, second["output"][0])
    assert "Using seed: 1234" in first["logs"]
    first_pixels = image(client, first["output"][0]).tobytes()
    assert first_pixels != image(client, other["output"][0]).tobytes()


def test_without_seed_a_16_bit_seed_is_drawn_and_logged(
    client: TestClient, auth: dict[str, str]
) -> None:
    body = _run(client, auth, FAST_SD_INPUT)
    match = re.search(r"Using seed: (\d+)", body["logs"])
    assert match, body["logs"]
    assert 0 <= int(match.group(1)) <= 65535
    assert "seed" not in body["input"]


def test_logs_carry_tqdm_style_progress(client: TestClient, auth: dict[str, str]) -> None:
    body = _run(client, auth, FAST_SD_INPUT)
    assert re.search(r"^ *50%\|█+ +\| 1/2 ", body["logs"], re.MULTILINE), body["logs"]
    assert re.search(r"^100%\|█+\| 2/2 ", body["logs"], re.MULTILINE), body["logs"]


def test_num_outputs_gives_distinct_files(client: TestClient, auth: dict[str, str]) -> None:
    body = _run(client, auth, {**FAST_SD_INPUT, "num_outputs": 3, "seed": 7})
    urls = body["output"]
    assert [url.rsplit("/", 1)[-1] for url in urls] == ["out-0.png", "out-1.png", "out-2.png"]
    assert len(set(urls)) == 3
    assert [d["url"] for d in body["data"]] == urls
    assert body["metrics"]["image_count"] == 3
    pictures = [image(client, url) for url in urls]
    assert all(p.size == (64, 64) for p in pictures)
    # One seed drives one batch: each image of it still gets its own noise.
    assert len({p.tobytes() for p in pictures}) == 3


def test_every_scheduler_of_the_schema_runs(client: TestClient, auth: dict[str, str]) -> None:
    version = client.get(
        f"/v1/models/stability-ai/stable-diffusion/versions/{SD_VERSION}", headers=auth
    ).json()
    names = version["openapi_schema"]["components"]["schemas"]["scheduler"]["enum"]
    assert len(names) == 6
    for name in names:
        body = _run(client, auth, {**FAST_SD_INPUT, "scheduler": name, "seed": 3})
        assert image(client, body["output"][0]).size == (64, 64), name


def test_negative_prompt_changes_the_image(client: TestClient, auth: dict[str, str]) -> None:
    plain = _run(client, auth, {**FAST_SD_INPUT, "seed": 11})
    negative = _run(client, auth, {**FAST_SD_INPUT, "seed": 11, "negative_prompt": "blurry, dark"})
    assert image(client, plain["output"][0]).tobytes() != (
        image(client, negative["output"][0]).tobytes()
    )

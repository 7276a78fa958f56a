"""The playground in a real browser (Debian's chromium, driven by Playwright's Python
API): save a key, fill stable-diffusion's form on tiny weights, run it, see the image
load at the size asked for, copy the same request as curl and Python (both run here
too), upload a file for img2img, and find the runs on the history page.

Skipped, saying why, where chromium or the Playwright package is missing (``make test``
installs chromium where it can)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from repligate.app import create_app
from repligate.settings import Settings
from repligate.testing.live_server import LiveServer
from tests.sd_family import noise_image

CHROMIUM = os.environ.get("REPLIGATE_CHROMIUM") or shutil.which("chromium") or ""
# Waiting on the page (never a timed assertion): generous, the machine may be busy.
WAIT_MS = 180_000

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed (pip install .[dev])"
)
if not CHROMIUM:
    pytest.skip(
        "no chromium browser: install Debian's chromium (apt-get install chromium; "
        "make test does so when run as root) or set REPLIGATE_CHROMIUM",
        allow_module_level=True,
    )

# A quote (the curl snippet quotes it for the shell) and markup (shown as text, never run).
PROMPT = "the fox's <b>den</b>"
IMAGE_LOADED = """(selector) => {
  const img = document.querySelector(selector);
  return img !== null && img.complete && img.naturalWidth > 0;
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where chromium's sandbox cannot start.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def live(settings: Settings) -> Iterator[LiveServer]:
    with LiveServer(create_app(settings)) as server:
        yield server


def watched_page(browser: Any) -> tuple[Any, list[str], list[str]]:
    """A fresh page, the URLs it requests, and the errors it logs (a CSP refusal is one)."""
    page = browser.new_context().new_page()
    requested: list[str] = []
    errors: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on(
        "console",
        lambda m: errors.append(f"{m.text} {m.location}") if m.type == "error" else None,
    )
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "response",
        lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None,
    )
    return page, requested, errors


def test_run_stable_diffusion_from_its_page_and_find_it_in_history(
    browser: Any, live: LiveServer, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = live.make_token()
    page, requested, errors = watched_page(browser)
    page.set_default_timeout(WAIT_MS)
    page.goto(f"{live.url}/")
    page.click("text=stability-ai/stable-diffusion")
    assert page.url == f"{live.url}/models/stability-ai/stable-diffusion"

    page.fill("#key", token)
    page.click("#save-key")
    assert page.text_content("#key-state") == "A token is saved in this browser."
    assert page.input_value("#key") == ""  # kept by the browser, not left on the page

    page.fill("#in-prompt", PROMPT)
    page.select_option("#in-width", "128")
    page.select_option("#in-height", "64")
    page.fill("#in-num_inference_steps", "2")
    page.select_option("#in-scheduler", "K_EULER")
    page.fill("#in-seed", "7")
    page.click("#run")

    page.wait_for_function(IMAGE_LOADED, arg="#outputs img")
    size = page.evaluate(
        "() => { const i = document.querySelector('#outputs img');"
        " return [i.naturalWidth, i.naturalHeight]; }"
    )
    assert size == [128, 64]
    page.wait_for_selector("#status.status-succeeded")
    assert "predict" in page.text_content("#metrics")
    # Followed live over the prediction's event stream; its step logs are on the page.
    assert any("/stream?expires=" in url for url in requested)
    assert "2/2" in (page.text_content("#logs") or "")
    assert page.get_attribute("#progress", "value") == "100"
    prediction_id = page.text_content("#prediction-id")
    assert prediction_id
    assert page.get_attribute("#web-link", "href").startswith(f"{live.url}/p/{prediction_id}?")

    # The same request as code: the curl body and the Python snippet both run as shown.
    curl = page.text_content("#curl-snippet") or ""
    assert f"curl -s -X POST {live.url}/v1/predictions" in curl
    assert page.locator("#result b").count() == 0  # the prompt's markup stayed text
    env = {**os.environ, "REPLICATE_API_TOKEN": token}
    if shutil.which("curl") and shutil.which("bash"):
        ran = subprocess.run(["bash", "-c", curl], env=env, capture_output=True, check=True)
        assert json.loads(ran.stdout)["status"] == "succeeded"
    sent = json.loads(curl.split("-d '", 1)[1].rsplit("'", 1)[0].replace("'\\''", "'"))
    assert sent["input"] == {
        "prompt": PROMPT,
        "height": 64,
        "width": 128,
        "num_outputs": 1,
        "num_inference_steps": 2,
        "guidance_scale": 7.5,
        "scheduler": "K_EULER",
        "seed": 7,
    }
    if not shutil.which("curl"):
        auth = {"Authorization": f"Bearer {token}", "Prefer": "wait"}
        again = httpx.post(f"{live.url}/v1/predictions", json=sent, headers=auth, timeout=120)
        assert again.json()["status"] == "succeeded"
    python = page.text_content("#python-snippet") or ""
    monkeypatch.setenv("REPLICATE_API_TOKEN", token)
    scope: dict[str, Any] = {}
    exec(compile(python.replace("print(output)", ""), "snippet", "exec"), scope)
    assert len(scope["output"]) == 1

    # Reloaded, the page still has the key; the history lists this run with its image.
    page.goto(f"{live.url}/history")
    assert page.text_content("#key-state") == "A token is saved in this browser."
    row = f'#history tr[data-id="{prediction_id}"]'
    page.wait_for_selector(row)
    assert "stability-ai/stable-diffusion" in (page.text_content(row) or "")
    assert "succeeded" in (page.text_content(row) or "")
    page.wait_for_function(IMAGE_LOADED, arg=f"{row} img")
    assert page.locator("#history tbody tr").count() == 3  # the page's, curl's, python's

    # The key travelled in headers only, and the page asked nothing of other hosts.
    assert not [url for url in requested if token in url]
    assert all(url.startswith(live.url) for url in requested), requested
    assert errors == []

    page.click("#forget-key")
    page.reload()
    page.wait_for_selector("#error:not([hidden])")
    assert "Save your API token" in (page.text_content("#error") or "")


def test_upload_a_file_for_img2img_and_run_it(
    browser: Any, live: LiveServer, tmp_path: Any
) -> None:
    token = live.make_token()
    picture = tmp_path / "input.png"
    noise_image(64, 64).save(picture)
    page, _, errors = watched_page(browser)
    page.set_default_timeout(WAIT_MS)
    page.goto(f"{live.url}/models/stability-ai/stable-diffusion-img2img")
    page.fill("#key", "r8_not-a-key")
    page.click("#save-key")
    page.set_input_files("#upload-image", str(picture))
    page.wait_for_selector("#error:not([hidden])")
    assert "input.png failed" in (page.text_content("#error") or "")
    assert page.input_value("#in-image") == ""
    errors.clear()  # the refused upload's 401, expected

    page.fill("#key", token)
    page.click("#save-key")
    page.set_input_files("#upload-image", str(picture))
    page.wait_for_function("() => document.querySelector('#in-image').value.includes('/v1/files/')")
    page.fill("#in-num_inference_steps", "2")
    page.fill("#in-prompt_strength", "0.5")
    page.click("#run")
    page.wait_for_function(IMAGE_LOADED, arg="#outputs img")
    page.wait_for_selector("#status.status-succeeded")
    size = page.evaluate(
        "() => { const i = document.querySelector('#outputs img');"
        " return [i.naturalWidth, i.naturalHeight]; }"
    )
    assert size == [64, 64]
    assert errors == []


def test_cancel_a_running_prediction_from_its_page(browser: Any, live: LiveServer) -> None:
    token = live.make_token()
    page, _, errors = watched_page(browser)
    page.set_default_timeout(WAIT_MS)
    page.goto(f"{live.url}/models/stability-ai/stable-diffusion")
    page.fill("#key", token)
    page.click("#save-key")
    page.select_option("#in-width", "64")
    page.select_option("#in-height", "64")
    page.fill("#in-num_inference_steps", "500")
    page.click("#run")
    page.wait_for_selector("#cancel:not([hidden])")
    page.click("#cancel")
    page.wait_for_selector("#status.status-canceled")
    assert page.is_hidden("#cancel")
    assert page.locator("#outputs img").count() == 0
    assert page.is_enabled("#run")
    assert errors == []

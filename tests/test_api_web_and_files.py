"""The prediction's web page (urls.web) and output files under /files/: what a browser
gets, escaped input, and no way out of the data directory (who may open the page:
test_web_pages.py)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api_helpers import assert_problem, download
from tests.conftest import FAST_SD_INPUT, SD_REF

HOSTILE_PROMPT = '<script>alert("x")</script> & a fox'


def test_web_page_shows_status_escaped_input_and_images(
    client: TestClient, auth: dict[str, str]
) -> None:
    body = {
        "version": SD_REF,
        "input": {**FAST_SD_INPUT, "prompt": HOSTILE_PROMPT, "num_outputs": 2},
    }
    created = client.post("/v1/predictions", json=body, headers={**auth, "Prefer": "wait"}).json()
    assert created["status"] == "succeeded"

    # Reached by the signed link the API answered with, without a key.
    page = client.get(created["urls"]["web"])
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "succeeded" in html
    assert created["id"] in html
    assert "<script>" not in html
    assert "&lt;script&gt;alert(" in html
    for url in created["output"]:
        assert f'<img src="{url}"' in html
        assert download(client, url)[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'http-equiv="refresh"' not in html  # finished: no reloading


def test_web_page_of_an_unknown_prediction_is_refused_like_any_unsigned_one(
    client: TestClient,
) -> None:
    # 403, as for a real id without a signature: no telling which ids exist.
    assert client.get("/p/doesnotexist").status_code == 403


def test_files_cannot_escape_the_data_dir(client: TestClient, auth: dict[str, str]) -> None:
    created = client.post(
        "/v1/predictions",
        json={"version": SD_REF, "input": FAST_SD_INPUT},
        headers={**auth, "Prefer": "wait"},
    ).json()
    good = created["output"][0]
    assert download(client, good)
    # The database sits in the data dir, one level above the files root.
    for path in (
        "/files/../../etc/passwd",
        "/files/%2e%2e/%2e%2e/etc/passwd",
        "/files/..%2f..%2fetc%2fpasswd",
        "/files/%2e%2e/repligate.db",
        "/files/..%2frepligate.db",
        "/files//etc/passwd",
        "/files/predictions",
        "/files/predictions/nothing/out-0.png",
    ):
        response = client.get(path)
        assert response.status_code == 404, path
        assert b"root:" not in response.content and b"SQLite" not in response.content
    assert_problem(client.get("/files/..%2frepligate.db"), 404)

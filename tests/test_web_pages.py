"""What a browser sees: the prediction page opens only through the signed urls.web or a
key login (never by id or output URL), output files are cached privately, and the home,
models and model pages link to each other and resolve."""

from __future__ import annotations

import stat
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi.testclient import TestClient
from pydantic import SecretStr

from repligate import __version__
from repligate.settings import Settings
from tests.api_helpers import app_client, download, finished
from tests.conftest import FAST_SD_INPUT, SD_REF, SD_VERSION, make_token
from tests.sd_family import IMG2IMG_REF, data_uri, noise_image

PROMPT = "a lighthouse only the owner may read about"


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def links_in(html: str) -> list[str]:
    parser = _Links()
    parser.feed(html)
    return parser.hrefs


def _run(client: TestClient, auth: dict[str, str], prompt: str = PROMPT) -> dict[str, Any]:
    body = {"version": SD_REF, "input": {**FAST_SD_INPUT, "prompt": prompt}}
    response = client.post("/v1/predictions", json=body, headers={**auth, "Prefer": "wait"})
    created: dict[str, Any] = response.json()
    assert created["status"] == "succeeded", created
    return created


def assert_refused(response: Any, created: dict[str, Any]) -> None:
    """A refusal page: says how to get in, shows nothing of the prediction."""
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert PROMPT not in html
    assert "urls.web" in html and 'name="token"' in html
    for url in created["output"]:
        assert urlsplit(url).path not in html
    assert "%|" not in html  # no logs


def test_the_signed_urls_web_opens_the_page_and_nothing_else_does(
    client: TestClient, auth: dict[str, str]
) -> None:
    created = _run(client, auth)
    web = created["urls"]["web"]
    page = client.get(web)
    assert page.status_code == 200
    assert PROMPT in page.text
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"
    # The GET answer carries a working link too (the owner lost the first one).
    again = client.get(created["urls"]["get"], headers=auth).json()["urls"]["web"]
    assert PROMPT in client.get(again).text

    pid = created["id"]
    query = dict(part.split("=", 1) for part in urlsplit(web).query.split("&"))
    expires, sig = query["expires"], query["sig"]
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    later = str(int(expires) + 1)
    for url in (
        f"/p/{pid}",
        f"/p/{pid}?expires={expires}",
        f"/p/{pid}?sig={sig}",
        f"/p/{pid}?expires={expires}&sig={flipped}",
        f"/p/{pid}?expires={later}&sig={sig}",  # a longer life is not the owner's to give
        f"/p/{pid}?expires=99999999999&sig=",
        f"/p/{pid}?expires=-1&sig={sig}",
        f"/p/{pid}?expires={'9' * 5000}&sig={sig}",
        f"/p/{pid}?expires=１２３&sig={sig}",
    ):
        assert_refused(client.get(url), created)

    # A signature is for its prediction only.
    other = _run(client, auth, prompt="another prompt")
    assert_refused(client.get(f"/p/{other['id']}?expires={expires}&sig={sig}"), created)


def test_an_expired_link_is_refused_and_says_so(client: TestClient, auth: dict[str, str]) -> None:
    created = _run(client, auth)
    links = client.app.state.container.links  # type: ignore[attr-defined]
    old = links.signed_url("http://testserver", created["id"], now=time.time() - 8 * 86400)
    response = client.get(old)
    assert_refused(response, created)
    assert "expired" in response.text


def test_an_output_url_opens_no_page(client: TestClient, auth: dict[str, str]) -> None:
    created = _run(client, auth)
    output = created["output"][0]
    assert download(client, output)
    # Whatever part of the output URL one tries as a page id, nothing of the input shows.
    for part in urlsplit(output).path.split("/"):
        if part:
            response = client.get(f"/p/{part}")
            assert response.status_code == 403
            assert PROMPT not in response.text
    # Unknown ids are refused the same way: no telling which ids exist.
    assert client.get("/p/doesnotexist").status_code == 403


def test_output_files_are_private_unless_the_operator_says(settings: Settings) -> None:
    with app_client(settings) as client:
        created = _run(client, {"Authorization": f"Bearer {make_token(client)}"})
        response = client.get(created["output"][0])
        assert response.headers["cache-control"] == "private, max-age=3600"
    with app_client(settings, output_cache_control="public, max-age=60") as public:
        assert public.get(created["output"][0]).headers["cache-control"] == "public, max-age=60"


def test_a_key_login_opens_the_owners_pages_only(
    client: TestClient, auth: dict[str, str], token: str
) -> None:
    created = _run(client, auth)
    pid = created["id"]
    assert_refused(client.get(f"/p/{pid}"), created)

    # From another site: refused, no cookie.
    response = client.post(
        f"/p/{pid}/login",
        data={"token": token},
        headers={"Sec-Fetch-Site": "cross-site"},
        follow_redirects=False,
    )
    assert response.status_code == 403 and "set-cookie" not in response.headers
    response = client.post(
        f"/p/{pid}/login", data={"token": token}, headers={"Origin": "https://evil.example"}
    )
    assert response.status_code == 403

    wrong = client.post(f"/p/{pid}/login", data={"token": "r8_nope"}, follow_redirects=False)
    assert wrong.status_code == 401 and "not valid" in wrong.text and PROMPT not in wrong.text

    response = client.post(
        f"/p/{pid}/login",
        data={"token": token},
        headers={"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"http://testserver/p/{pid}"
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/p" in cookie
    page = client.get(f"/p/{pid}")
    assert page.status_code == 200 and PROMPT in page.text

    # Someone else's login does not open it.
    bob = {"Authorization": f"Bearer {make_token(client, 'bob')}"}
    bobs = _run(client, bob, prompt="bob's prompt")
    assert_refused(client.get(f"/p/{bobs['id']}"), created)
    assert "does not own" in client.get(f"/p/{bobs['id']}").text

    client.post("/logout")
    assert_refused(client.get(f"/p/{pid}"), created)


def test_the_secret_is_made_once_kept_private_and_survives_a_restart(
    settings: Settings,
) -> None:
    secret = settings.data_dir / "secret"
    with app_client(settings) as client:
        web = _run(client, {"Authorization": f"Bearer {make_token(client)}"})["urls"]["web"]
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    made = secret.read_bytes()
    with app_client(settings) as restarted:
        assert PROMPT in restarted.get(web).text
    assert secret.read_bytes() == made


def test_a_configured_secret_key_signs_for_every_process(
    settings: Settings, tmp_path: Path
) -> None:
    key = SecretStr("k" * 40)
    with app_client(settings, secret_key=key) as first:
        web = _run(first, {"Authorization": f"Bearer {make_token(first)}"})["urls"]["web"]
    # Another data dir (another process's), the same database and key: the link works.
    shared_db = settings.resolved_database_url()
    other = tmp_path / "other"
    with app_client(settings, secret_key=key, database_url=shared_db, data_dir=other) as second:
        assert PROMPT in second.get(web).text
    assert not (other / "secret").exists()
    with app_client(settings) as unkeyed:  # the generated secret is another one
        assert unkeyed.get(web).status_code == 403


def test_home_page_names_the_server_and_every_link_resolves(client: TestClient) -> None:
    home = client.get("/")
    assert home.status_code == 200
    assert home.headers["content-type"].startswith("text/html")
    assert "repligate" in home.text and __version__ in home.text
    hrefs = links_in(home.text)
    assert any(h.endswith("/docs") for h in hrefs) and any(h.endswith("/models") for h in hrefs)
    for href in hrefs:
        assert client.get(href).status_code == 200, href

    models = client.get("/models")
    model_links = [h for h in links_in(models.text) if "/models/" in h]
    assert len(model_links) == 10
    for href in model_links:
        page = client.get(href)
        assert page.status_code == 200, href
        assert "Example request" in page.text


def test_a_model_objects_url_is_its_page(client: TestClient, auth: dict[str, str]) -> None:
    model = client.get("/v1/models/stability-ai/stable-diffusion", headers=auth).json()
    page = client.get(model["url"])
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert SD_VERSION in page.text
    assert model["description"] in page.text
    for field in ("prompt", "num_inference_steps", "scheduler"):
        assert f"<code>{field}</code>" in page.text
    assert "K_EULER" in page.text  # choices come from the schema's enum
    assert client.get("/models/nobody/nothing").status_code == 404


def test_a_failed_prediction_page_says_failed_and_wraps_what_it_shows(
    tmp_path: Path,
) -> None:
    # No weights (the hub is offline in tests): the run fails at once, saying what to set.
    settings = Settings(data_dir=tmp_path / "data", weights_dir=tmp_path / "empty")
    image = data_uri(noise_image(64, 64))
    long_prompt = "a harbour at dusk " * 40
    with app_client(settings) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        body = {"version": IMG2IMG_REF, "input": {"prompt": long_prompt, "image": image}}
        created = client.post("/v1/predictions", json=body, headers=auth).json()
        done = finished(client, created["urls"]["get"], auth)
        assert done["status"] == "failed"
        html = client.get(done["urls"]["web"]).text
    assert "status-failed" in html and ">failed<" in html
    assert "No output yet" not in html and "the prediction failed" in html
    assert "REPLIGATE_WEIGHTS_DIR" in html  # the error text
    assert image not in html
    assert image[:40] in html and "KB)" in html
    assert long_prompt.strip() in html
    assert "white-space:pre-wrap" in html and "overflow-wrap:anywhere" in html


def test_running_and_canceled_pages_say_so(client: TestClient, auth: dict[str, str]) -> None:
    very_slow = {**FAST_SD_INPUT, "prompt": PROMPT, "num_inference_steps": 500}
    created = client.post(
        "/v1/predictions", json={"version": SD_REF, "input": very_slow}, headers=auth
    ).json()
    web = created["urls"]["web"]
    page = client.get(web).text
    assert 'http-equiv="refresh"' in page and "No output yet" in page
    assert ">starting<" in page or ">processing<" in page
    client.post(created["urls"]["cancel"], headers=auth)
    page = client.get(web).text
    assert ">canceled<" in page and "was canceled" in page
    assert 'http-equiv="refresh"' not in page

"""The playground's pages as HTML (no browser): a model page's run form follows the
schema (order, defaults, selects, bounds, uploads), the home page lists the models, the
history page and the script come from this server, and only playground pages may run it."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import SD_VERSION

SD_PAGE = "/models/stability-ai/stable-diffusion"


class _Form(HTMLParser):
    """The controls inside ``#run-form``: tag, attributes, and a select's options."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.controls: list[dict[str, Any]] = []
        self.form: dict[str, str | None] = {}
        self._text: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "form" and found.get("id") == "run-form":
            self.inside, self.form = True, found
        elif self.inside and tag in ("input", "select", "textarea"):
            self.controls.append({"tag": tag, **found, "options": []})
            if tag == "textarea":
                self._text = []
        elif self.inside and tag == "option":
            self.controls[-1]["options"].append(found)

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        if tag == "textarea" and self._text is not None:
            self.controls[-1]["text"] = "".join(self._text)
            self._text = None


def run_form(html: str) -> _Form:
    parser = _Form()
    parser.feed(html)
    return parser


def named(form: _Form) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in form.controls if c.get("name")}


def test_the_stable_diffusion_form_follows_its_schema(client: TestClient) -> None:
    response = client.get(SD_PAGE)
    assert response.status_code == 200
    form = run_form(response.text)
    assert form.form["data-version"] == f"stability-ai/stable-diffusion:{SD_VERSION}"
    # Replicate's x-order, not the schema's key order (seed comes first there).
    assert [c["name"] for c in form.controls if c.get("name")] == [
        "prompt",
        "height",
        "width",
        "negative_prompt",
        "num_outputs",
        "num_inference_steps",
        "guidance_scale",
        "scheduler",
        "seed",
    ]
    fields = named(form)
    assert fields["prompt"]["tag"] == "textarea"
    assert fields["prompt"]["text"] == "a vision of paradise. unreal engine"
    # Enums (through allOf/$ref) are selects with the default chosen.
    scheduler = fields["scheduler"]
    assert scheduler["tag"] == "select"
    assert [o["value"] for o in scheduler["options"]] == [
        "DDIM",
        "K_EULER",
        "DPMSolverMultistep",
        "K_EULER_ANCESTRAL",
        "PNDM",
        "KLMS",
    ]
    chosen = [o["value"] for o in scheduler["options"] if "selected" in o]
    assert chosen == ["DPMSolverMultistep"]
    width = fields["width"]
    assert width["tag"] == "select" and width["data-kind"] == "integer"
    assert [o["value"] for o in width["options"]][:3] == ["64", "128", "192"]
    assert [o["value"] for o in width["options"] if "selected" in o] == ["768"]
    # Ranges: a number field with min/max and the default, and a slider beside it.
    steps = fields["num_inference_steps"]
    assert (steps["type"], steps["min"], steps["max"], steps["value"]) == (
        "number",
        "1",
        "500",
        "50",
    )
    assert steps["step"] == "1" and steps["data-kind"] == "integer"
    guidance = fields["guidance_scale"]
    assert (guidance["min"], guidance["max"], guidance["value"], guidance["step"]) == (
        "1",
        "20",
        "7.5",
        "any",
    )
    sliders = [c for c in form.controls if c.get("type") == "range"]
    assert {s["data-for"] for s in sliders} == {
        "in-num_outputs",
        "in-num_inference_steps",
        "in-guidance_scale",
    }
    assert all("name" not in s for s in sliders)  # only the number field is sent
    # No default: empty, so the server picks (a random seed).
    assert fields["seed"]["type"] == "number" and "value" not in fields["seed"]
    negative = fields["negative_prompt"]
    assert negative["tag"] == "textarea" and negative.get("text", "") == ""


def test_file_fields_take_a_url_or_an_upload(client: TestClient) -> None:
    form = run_form(client.get("/models/stability-ai/stable-diffusion-inpainting").text)
    fields = named(form)
    for name in ("image", "mask"):
        assert fields[name]["type"] == "url" and fields[name]["data-kind"] == "file"
        assert "required" in fields[name]
        uploads = [c for c in form.controls if c.get("data-upload-for") == f"in-{name}"]
        assert len(uploads) == 1 and uploads[0]["type"] == "file"


def test_every_model_has_a_form_and_the_home_page_lists_them(client: TestClient) -> None:
    home = client.get("/").text
    listed = client.get("/models").text
    refs = [line.split("/models/", 1)[1].split('"', 1)[0] for line in listed.split("<tr>")[1:]]
    assert len(refs) == 10
    for ref in refs:
        assert f"/models/{ref}" in home
        form = run_form(client.get(f"/models/{ref}").text)
        assert form.form["data-version"].startswith(f"{ref}:")  # type: ignore[union-attr]
        assert form.controls


def test_the_script_is_served_here_and_only_playground_pages_may_run_it(
    client: TestClient,
) -> None:
    page = client.get(SD_PAGE)
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert 'src="http://testserver/static/playground.js"' in page.text
    # Nothing from elsewhere: every src and href on the page is this server's (or the
    # empty data: favicon); the example image URL in the example request is text.
    for attr in ("src=", "href="):
        for part in page.text.split(attr)[1:]:
            url = part[1:].split(part[0], 1)[0]
            assert url.startswith("http://testserver") or url == "data:,", url
    script = client.get("/static/playground.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "localStorage" in script.text and "innerHTML" not in script.text
    # Pages without the playground still allow no script.
    assert "script-src" not in client.get("/models").headers["content-security-policy"]


def test_the_history_page_keeps_the_key_out_of_urls(client: TestClient) -> None:
    page = client.get("/history")
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert 'id="history"' in page.text and 'type="password"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    # The key form posts nowhere: the script keeps the key and sends it as a header.
    assert "action=" not in page.text.split('id="key-form"', 1)[1].split("</form>", 1)[0]

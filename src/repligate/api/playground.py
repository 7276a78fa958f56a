"""The playground: a model's page runs its form in the browser, and ``/history`` lists the
predictions of the key the browser keeps.

The key is entered once and kept in the browser's ``localStorage``; the script sends it
as a bearer header to the API (never in a URL, never to a page route). Everything the
browser needs comes from this server: the pages, and ``/static/playground.js`` (no
build step, nothing from a CDN). The script builds the page with DOM calls and
``textContent`` only, so nothing the API returns is ever parsed as HTML."""

from __future__ import annotations

from html import escape
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from repligate.api.deps import base_url
from repligate.api.forms import input_form
from repligate.api.html import page
from repligate.models.spec import ModelSpec

router = APIRouter(include_in_schema=False)

SCRIPT_PATH = "/static/playground.js"


def script_url(base: str) -> str:
    return f"{base}{SCRIPT_PATH}"


def _key_box() -> str:
    """Where the user gives the API token once; the script keeps it in localStorage."""
    return """<form id="key-form" autocomplete="off">
<label>API token <input type="password" id="key" name="key" autocomplete="off"
placeholder="r8_…"></label>
<button type="submit" id="save-key">Save in this browser</button>
<button type="button" id="forget-key" hidden>Forget</button>
<span id="key-state" class="muted"></span>
</form>"""


def _playground_root(base: str, kind: str) -> str:
    """The element the script starts from: where the API is, which page this is."""
    b = escape(base, quote=True)
    return f'<div id="playground" data-base="{b}" data-api="{b}/v1" data-page="{kind}"></div>'


def run_section(spec: ModelSpec, base: str) -> str:
    """The model page's "Run" part: key, form, live result, and the same request as code."""
    home = escape(base)
    return f"""{_playground_root(base, "run")}
<h2>Run</h2>
<noscript><p>Running from this page needs JavaScript; the example requests below work
without it.</p></noscript>
{_key_box()}
{input_form(spec)}
<div id="result" hidden>
<h2>Result</h2>
<p><span id="status" class="status"></span> <span id="prediction-id" class="muted"></span>
<a id="web-link" hidden>Prediction page</a>
<button type="button" id="cancel" hidden>Cancel</button>
· <a href="{home}/history">History</a></p>
<p><progress id="progress" max="100" hidden></progress> <span id="progress-text"
class="muted"></span></p>
<pre id="error" class="error" hidden></pre>
<div id="outputs"></div>
<p id="metrics" class="muted"></p>
<details><summary>Logs</summary><pre id="logs"></pre></details>
<h3>The same request</h3>
<p>curl <button type="button" class="copy" data-copy="curl-snippet">Copy</button></p>
<pre id="curl-snippet"></pre>
<p>Python (<code>pip install replicate</code>)
<button type="button" class="copy" data-copy="python-snippet">Copy</button></p>
<pre id="python-snippet"></pre>
</div>"""


@router.get("/history", response_class=HTMLResponse)
def history_page(request: Request) -> HTMLResponse:
    base = base_url(request)
    home = escape(base)
    body = f"""<p><a href="{home}/">repligate</a> · <a href="{home}/models">Models</a></p>
<h1>History</h1>
{_playground_root(base, "history")}
<p>The predictions of the API token this browser keeps, newest first.</p>
<noscript><p>This page needs JavaScript: it reads <code>GET /v1/predictions</code> with
your token.</p></noscript>
{_key_box()}
<pre id="error" class="error" hidden></pre>
<table id="history"><thead><tr><th>Created</th><th>Model</th><th>Status</th>
<th>Output</th></tr></thead><tbody></tbody></table>
<p><button type="button" id="more" hidden>More</button></p>"""
    return page("History · repligate", body, script=script_url(base), private=True)


@router.get(SCRIPT_PATH)
def playground_script() -> Response:
    source = resources.files("repligate.api").joinpath("static/playground.js").read_text()
    return Response(
        source,
        media_type="text/javascript",
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )

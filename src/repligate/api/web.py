"""``urls.web``: a small HTML page of one prediction (status, inputs, outputs, error, logs).

The page shows what the owner sent, so the prediction id alone (which every output URL
carries) does not open it. It opens with either
- the signed link the API answers with (``?expires=…&sig=…``, see links.py), or
- a key login: the owner posts an API token to ``/p/<id>/login`` from the page that
  refused them, and it is kept in an HttpOnly, SameSite=Strict cookie scoped to ``/p``.
Anything else gets a 403 page that says how to get a working link and shows nothing of
the prediction, whether or not it exists."""

from __future__ import annotations

import asyncio
from datetime import datetime
from html import escape
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from repligate.api.deps import base_url, container
from repligate.api.html import page, shown, text
from repligate.api.wire import output_urls
from repligate.errors import AuthenticationError, NotFound
from repligate.lifecycle import Status
from repligate.links import LinkCheck
from repligate.records import Prediction
from repligate.storage.base import resolve_output

router = APIRouter(include_in_schema=False)

COOKIE = "repligate_token"
COOKIE_PATH = "/p"
COOKIE_MAX_AGE = 12 * 3600
_LOGIN_BODY_LIMIT = 4096
_VIDEO_SUFFIXES = (".mp4", ".webm", ".mov")

_NO_OUTPUT = {
    Status.STARTING: "No output yet: the prediction is waiting for a worker.",
    Status.PROCESSING: "No output yet: the prediction is running.",
    Status.SUCCEEDED: "The prediction finished without output.",
    Status.FAILED: "No output: the prediction failed.",
    Status.CANCELED: "No output: the prediction was canceled.",
}


@router.get("/p/{prediction_id}", response_class=HTMLResponse)
def prediction_page(
    prediction_id: str,
    request: Request,
    expires: str | None = None,
    sig: str | None = None,
) -> Response:
    services = container(request)
    verdict = services.links.check(prediction_id, expires, sig)
    if verdict is LinkCheck.VALID:
        try:
            found = services.service.peek(prediction_id)
        except NotFound:
            gone = "<h1>Not found</h1><p>This prediction no longer exists.</p>"
            return page("Not found", gone, status_code=404, private=True)
        return _prediction(found, request)
    owned = _owned_by_login(request, prediction_id)
    if owned is not None:
        return _prediction(owned, request, logged_in=True)
    return _refused(request, prediction_id, verdict)


def _owned_by_login(request: Request, prediction_id: str) -> Prediction | None:
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    service = container(request).service
    try:
        return service.get(service.authenticate(token), prediction_id)
    except (AuthenticationError, NotFound):
        return None


def _refused(
    request: Request, prediction_id: str, verdict: LinkCheck, *, status_code: int = 403
) -> HTMLResponse:
    ttl_days = container(request).links.ttl_seconds / 86400
    if status_code == 401:
        why = "That API token is not valid."
    elif verdict is LinkCheck.EXPIRED:
        why = "This link has expired."
    elif request.cookies.get(COOKIE):
        why = "The API token this browser logged in with does not own this prediction."
        why += " (Or it was revoked.)"
    else:
        why = "This address needs a signed link or a login."
    action = f"{base_url(request)}/p/{quote(prediction_id, safe='')}/login"
    body = f"""<p><a href="{escape(base_url(request))}/">repligate</a></p>
<h1>This prediction is private</h1>
<p>{escape(why)}</p>
<p>Its page shows what its owner sent, so neither its id nor its output URLs open it.
The owner opens it with:</p>
<ul>
<li>the <code>urls.web</code> link in the API's answer:
<code>GET /v1/predictions/{text(prediction_id)}</code> with your API token returns a fresh
one, valid for {ttl_days:g} days;</li>
<li>or your API token, here (kept in this browser for {COOKIE_MAX_AGE // 3600} hours):</li>
</ul>
<form method="post" action="{escape(action)}">
<label>API token <input type="password" name="token" autocomplete="off" required></label>
<button type="submit">Log in</button>
</form>"""
    return page("Private prediction", body, status_code=status_code, private=True)


def _prediction(found: Prediction, request: Request, *, logged_in: bool = False) -> HTMLResponse:
    base = base_url(request)
    output = resolve_output(found.output, container(request).storage, base)
    urls = output_urls(output)
    shown_outputs = "".join(_output_html(url) for url in urls)
    if not shown_outputs:
        shown_outputs = f'<p class="muted">{escape(_NO_OUTPUT[found.status])}</p>'
    refresh = "" if found.status.is_terminal else '<meta http-equiv="refresh" content="2">'
    status = found.status.value
    error = f'<h2>Error</h2><pre class="error">{text(found.error)}</pre>' if found.error else ""
    inputs = "".join(
        f'<tr><th>{escape(name)}</th><td><div class="value">{shown(value)}</div></td></tr>'
        for name, value in found.input.items()
    )
    times = [f"created {_when(found.created_at)}"]
    if found.completed_at is not None:
        times.append(f"{escape(status)} {_when(found.completed_at)}")
    if found.predict_time is not None:
        times.append(f"ran {found.predict_time:.2f} s")
    logout = (
        f'<form method="post" action="{escape(base)}/logout"><button>Log out</button></form>'
        if logged_in
        else ""
    )
    model = escape(found.model)
    home = escape(base)
    body = f"""<p><a href="{home}/">repligate</a> · <a href="{home}/models/{model}">{model}</a></p>
<h1>{model}</h1>
<p>Prediction <code>{escape(found.id)}</code>
· <span class="status status-{escape(status)}">{escape(status)}</span></p>
<p class="muted">{" · ".join(times)}</p>
<h2>Output</h2>{shown_outputs}
{error}
<h2>Input</h2><table>{inputs}</table>
<h2>Logs</h2><pre>{text(found.logs) or '<span class="muted">(none)</span>'}</pre>
{logout}"""
    return page(f"{found.model} · {status}", body, head=refresh, private=True)


def _when(moment: datetime) -> str:
    return escape(moment.strftime("%Y-%m-%d %H:%M:%S UTC"))


def _output_html(url: str) -> str:
    link = escape(url)
    path = urlsplit(url).path.lower()
    if path.endswith(_VIDEO_SUFFIXES):
        return f'<video src="{link}" controls loop></video><p><a href="{link}">{link}</a></p>'
    if url.startswith(("http://", "https://")):
        return f'<a href="{link}"><img src="{link}" alt="output"></a>'
    return f'<div class="value">{text(url)}</div>'


@router.post("/p/{prediction_id}/login")
async def login(prediction_id: str, request: Request) -> Response:
    """Keep a valid API token in a cookie only ``/p`` pages receive, then show the page."""
    if not _same_origin(request):
        refused = "<h1>Refused</h1><p>Log in from this server's own page.</p>"
        return page("Refused", refused, status_code=403)
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > _LOGIN_BODY_LIMIT:
            return page("Too large", "<h1>Request too large</h1>", status_code=413)
    token = parse_qs(raw.decode("utf-8", "replace")).get("token", [""])[0].strip()
    service = container(request).service
    try:
        await asyncio.to_thread(service.authenticate, token or None)
    except AuthenticationError:
        return _refused(request, prediction_id, LinkCheck.INVALID, status_code=401)
    target = f"{base_url(request)}/p/{quote(prediction_id, safe='')}"
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        max_age=COOKIE_MAX_AGE,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=target.startswith("https://"),
    )
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    if not _same_origin(request):
        return page("Refused", "<h1>Refused</h1>", status_code=403)
    response = RedirectResponse(f"{base_url(request)}/", status_code=303)
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response


def _same_origin(request: Request) -> bool:
    """Forms posted from another site are refused (no logging a visitor in as someone
    else). Browsers say where a post came from; clients that say nothing pass."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    ours = {urlsplit(base_url(request)).netloc, request.headers.get("host", "")}
    return urlsplit(origin).netloc in ours

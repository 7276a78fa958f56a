"""What the HTML pages share: one layout, safe headers, and values made fit to show.

Pages are plain server-built HTML: every value passes through ``html.escape``, and the
Content-Security-Policy allows no script at all, except on playground pages, which load
one script file from this server (``script=``) and may talk only to this server."""

from __future__ import annotations

import json
from html import escape
from typing import Any

from fastapi.responses import HTMLResponse

# Long enough to recognise a data URI by, short enough never to flood a page.
_DATA_URI_SHOWN = 32
_DATA_URI_SHORTEN_FROM = 100
_TEXT_SHOWN = 20_000

_CSS = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
line-height:1.45;color:#1a1a1a}
a{color:#0b57d0}
img,video{max-width:100%;margin:.5rem 0;display:block}
pre,.value{white-space:pre-wrap;overflow-wrap:anywhere;word-break:break-word;margin:0}
pre{background:#f4f4f4;padding:1rem;border-radius:4px}
pre.error{background:#fdecea;color:#7a1712}
table{border-collapse:collapse;width:100%;table-layout:fixed}
th,td{text-align:left;vertical-align:top;padding:.35rem .5rem;border-bottom:1px solid #ddd;
overflow-wrap:anywhere}
th{width:11rem}
.status{display:inline-block;padding:.1rem .5rem;border-radius:4px;background:#eee}
.status-succeeded{background:#e3f4e5;color:#14532d}
.status-failed{background:#fdecea;color:#7a1712}
.status-canceled{background:#f1f1f1;color:#555}
.muted{color:#666}
code{overflow-wrap:anywhere}
form#run-form input[type=text],form#run-form input[type=url],form#run-form textarea{width:100%;
box-sizing:border-box}
input.slider{vertical-align:middle;width:12rem}
.thumb img,.thumb video{max-width:8rem;margin:0}
"""

# No script anywhere; images and video from this server or any http(s) storage host.
_CSP = (
    "default-src 'none'; img-src 'self' data: https: http:; media-src 'self' https: http:; "
    "style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# Playground pages: their one script, from this server, talking to this server only.
_SCRIPT_CSP = "; script-src 'self'; connect-src 'self'"


def page(
    title: str,
    body: str,
    *,
    status_code: int = 200,
    head: str = "",
    private: bool = False,
    script: str | None = None,
) -> HTMLResponse:
    """A whole page. ``body`` is HTML the caller built with escaped values; ``private``
    pages (a prediction's) are neither cached, indexed, nor named in a Referer. ``script``
    is the URL of a script file of this server's to load (the playground's)."""
    if script is not None:
        head += f'<script src="{escape(script)}" defer></script>'
    document = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">{head}
<title>{escape(title)}</title><style>{_CSS}</style></head>
<body>
{body}
</body></html>"""
    headers = {
        "Content-Security-Policy": _CSP + (_SCRIPT_CSP if script is not None else ""),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    if private:
        headers["Cache-Control"] = "no-store"
        headers["X-Robots-Tag"] = "noindex"
    return HTMLResponse(document, status_code=status_code, headers=headers)


def human_size(size: int) -> str:
    for unit in ("B", "KB", "MB"):
        if size < 1000:
            return f"{size} {unit}"
        size = round(size / 1000)
    return f"{size} GB"


def shorten_data_uri(value: str) -> str:
    """``data:image/png;base64,iVBORw0K… (226 KB)``: recognisable, and the page stays small."""
    if not value.startswith("data:") or len(value) < _DATA_URI_SHORTEN_FROM:
        return value
    header, _, payload = value.partition(",")
    base64 = header.endswith(";base64")
    size = len(payload.rstrip("=")) * 3 // 4 if base64 else len(payload)
    return f"{header},{payload[:_DATA_URI_SHOWN]}… ({human_size(size)})"


def shortened(value: Any) -> Any:
    """``value`` with every data URI inside it shortened (any JSON shape)."""
    if isinstance(value, str):
        return shorten_data_uri(value)
    if isinstance(value, list):
        return [shortened(item) for item in value]
    if isinstance(value, dict):
        return {key: shortened(item) for key, item in value.items()}
    return value


def text(value: str) -> str:
    """Escaped text, cut past a length no page needs (a prompt is never that long)."""
    if len(value) > _TEXT_SHOWN:
        rest = len(value) - _TEXT_SHOWN
        value = f"{value[:_TEXT_SHOWN]}… ({rest} more characters)"
    return escape(value)


def shown(value: Any) -> str:
    """One input or schema value as escaped text: strings as they are, the rest as JSON."""
    value = shortened(value)
    return text(value if isinstance(value, str) else json.dumps(value, indent=1))

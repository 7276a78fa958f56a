"""``urls.web``: a small HTML page of one prediction (inputs, status, logs, outputs).

Reached by its unguessable id, like the output files, so a browser can open it."""

from __future__ import annotations

import json
from html import escape

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from repligate.api.deps import base_url, container
from repligate.api.wire import output_urls
from repligate.storage.base import resolve_output

router = APIRouter()


@router.get("/p/{prediction_id}", response_class=HTMLResponse)
def prediction_page(prediction_id: str, request: Request) -> HTMLResponse:
    found = container(request).service.peek(prediction_id)
    base = base_url(request)
    output = resolve_output(found.output, container(request).storage, base)
    images = "".join(
        f'<a href="{escape(url)}"><img src="{escape(url)}" alt="output"></a>'
        for url in output_urls(output)
    )
    refresh = "" if found.status.is_terminal else '<meta http-equiv="refresh" content="2">'
    error = f"<h2>Error</h2><pre>{escape(found.error)}</pre>" if found.error else ""
    page = f"""<!doctype html>
<html><head><meta charset="utf-8">{refresh}
<title>{escape(found.model)} · {escape(found.id)}</title>
<style>body{{font-family:sans-serif;max-width:60rem;margin:2rem auto}}
img{{max-width:100%;margin:.5rem 0}}pre{{background:#f4f4f4;padding:1rem;overflow:auto}}</style>
</head><body>
<h1>{escape(found.model)}</h1>
<p>Prediction <code>{escape(found.id)}</code> · status <strong>{escape(found.status.value)}</strong>
· created {escape(found.created_at.isoformat())}</p>
<h2>Input</h2><pre>{escape(json.dumps(found.input, indent=2))}</pre>
<h2>Output</h2>{images or "<p>No output yet.</p>"}
{error}
<h2>Logs</h2><pre>{escape(found.logs)}</pre>
</body></html>"""
    return HTMLResponse(page)

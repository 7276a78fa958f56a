"""Pages a browser can follow: ``/`` (name, version, links, the models), ``/models`` (the
list) and ``/models/<owner>/<name>`` (what a model object's ``url`` names: description,
version, input fields from the schema, the playground's run form, an example request).
Public, like the model objects: the run form sends the browser's own key (playground.py)."""

from __future__ import annotations

import json
from html import escape
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from repligate import __version__
from repligate.api.deps import base_url, container
from repligate.api.forms import ordered_fields as _fields
from repligate.api.forms import resolved as _resolved
from repligate.api.html import page, shown, text
from repligate.api.playground import run_section, script_url
from repligate.errors import NotFound
from repligate.models.spec import ModelSpec

router = APIRouter(include_in_schema=False)

_EXAMPLE_PROMPT = "a red fox in the snow, golden hour"
_EXAMPLE_IMAGE = "https://example.com/input.png"


@router.get("/", response_class=HTMLResponse)
def home(request: Request) -> HTMLResponse:
    base = escape(base_url(request))
    docs = request.app.docs_url
    docs_link = f'<li><a href="{base}{escape(docs)}">API docs</a></li>' if docs else ""
    specs = container(request).service.registry.all()
    count = len(specs)
    rows = "".join(
        f'<tr><th><a href="{base}/models/{escape(spec.ref)}">{escape(spec.ref)}</a></th>'
        f"<td>{text(spec.description)}</td></tr>"
        for spec in specs
    )
    body = f"""<h1>repligate</h1>
<p>A self-hosted, Replicate-compatible predictions server
· version <code>{escape(__version__)}</code></p>
<ul>
<li><a href="{base}/models">Models</a> ({count})</li>
{docs_link}
<li><a href="{base}/openapi.json">OpenAPI schema</a></li>
<li><a href="{base}/health">Health</a></li>
<li><a href="{base}/history">History</a> (your predictions)</li>
</ul>
<h2>Try a model</h2>
<p>Open a model to run it from this browser with your API token.</p>
<table>{rows}</table>
<p>Send the requests you send to Replicate to <code>{base}/v1/…</code>
(or <code>{base}/replicate/v1/…</code>) with an API token from
<code>repligate keys create</code>.</p>"""
    return page(f"repligate {__version__}", body)


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request) -> HTMLResponse:
    base = escape(base_url(request))
    rows = "".join(
        f'<tr><th><a href="{base}/models/{escape(spec.ref)}">{escape(spec.ref)}</a></th>'
        f"<td>{text(spec.description)}</td></tr>"
        for spec in container(request).service.registry.all()
    )
    body = f"""<p><a href="{base}/">repligate</a></p>
<h1>Models</h1>
<table>{rows}</table>"""
    return page("Models · repligate", body)


@router.get("/models/{owner}/{name}", response_class=HTMLResponse)
def model_page(owner: str, name: str, request: Request) -> HTMLResponse:
    base = base_url(request)
    service = container(request).service
    try:
        spec = service.registry.model(owner, name)
    except NotFound:
        missing = f"""<p><a href="{escape(base)}/models">Models</a></p>
<h1>Not found</h1><p>This server has no model {text(f"{owner}/{name}")}.</p>"""
        return page("Not found", missing, status_code=404)
    home = escape(base)
    body = f"""<p><a href="{home}/">repligate</a> · <a href="{home}/models">Models</a></p>
<h1>{escape(spec.ref)}</h1>
<p>{text(spec.description)}</p>
<p>Version <code>{escape(spec.version)}</code> · published {escape(spec.version_created_at[:10])}
· {service.run_count(spec)} runs here</p>
<h2>Input</h2>
{_inputs_table(spec)}
<h2>Output</h2>
<p>{text(_output_description(spec))}</p>
{run_section(spec, base)}
<h2>Example request</h2>
<pre>{escape(_example_curl(spec, base))}</pre>
<p>Or with the official Python client:</p>
<pre>{escape(_example_python(spec, base))}</pre>"""
    return page(f"{spec.ref} · repligate", body, script=script_url(base))


def _kind(field: dict[str, Any]) -> str:
    kind = str(field.get("type", "any"))
    if field.get("format") == "uri":
        kind = "file (URL or data URI)"
    if "enum" in field:
        kind += ", one of " + ", ".join(json.dumps(choice) for choice in field["enum"])
    if "minimum" in field or "maximum" in field:
        kind += f", {field.get('minimum', '…')} to {field.get('maximum', '…')}"
    return kind


def _inputs_table(spec: ModelSpec) -> str:
    required = set(spec.schemas["Input"].get("required", []))
    rows = []
    for name, raw in _fields(spec):
        field = _resolved(spec, raw)
        default = (
            "required"
            if name in required
            else f"default {shown(field['default'])}"
            if "default" in field
            else "optional"
        )
        rows.append(
            f"<tr><th><code>{escape(name)}</code></th><td>{text(field.get('description', ''))}"
            f'<div class="muted">{escape(_kind(field))} · {default}</div></td></tr>'
        )
    return f"<table>{''.join(rows)}</table>"


def _output_description(spec: ModelSpec) -> str:
    output = spec.schemas.get("Output", {})
    if output.get("type") == "array":
        return "A list of file URLs."
    if output.get("format") == "uri":
        return "One file URL."
    return json.dumps(output)


def _example_input(spec: ModelSpec) -> dict[str, Any]:
    """The required fields and the prompt, else the first field: what a first run needs."""
    required = set(spec.schemas["Input"].get("required", []))
    fields = _fields(spec)
    chosen = [(n, f) for n, f in fields if n in required or n == "prompt"] or fields[:1]
    example: dict[str, Any] = {}
    for name, raw in chosen:
        field = _resolved(spec, raw)
        if field.get("format") == "uri":
            example[name] = _EXAMPLE_IMAGE.replace("input", name)
        elif field.get("type") == "string":
            example[name] = _EXAMPLE_PROMPT if "prompt" in name else field.get("default", "…")
        else:
            example[name] = field.get("default", field.get("minimum", 1))
    return example


def _example_curl(spec: ModelSpec, base: str) -> str:
    body = json.dumps({"version": f"{spec.ref}:{spec.version}", "input": _example_input(spec)})
    return (
        f"curl -X POST {base}/v1/predictions \\\n"
        '  -H "Authorization: Bearer $REPLICATE_API_TOKEN" \\\n'
        "  -H 'Content-Type: application/json' \\\n"
        "  -H 'Prefer: wait' \\\n"
        f"  -d '{body}'"
    )


def _example_python(spec: ModelSpec, base: str) -> str:
    return (
        "import replicate\n"
        f'client = replicate.Client(api_token=TOKEN, base_url="{base}")\n'
        f'output = client.run("{spec.ref}:{spec.version}", input={_example_input(spec)!r})'
    )

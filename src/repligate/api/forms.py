"""A model's input schema as an HTML form, for the playground on its page.

Fields come in Replicate's order (``x-order``) with the schema's defaults; enums become
selects, bounded numbers a number field with ``min``/``max`` and a slider beside it,
booleans checkboxes, and files (``format: uri``) a URL field with an upload beside it.
Every control carries ``data-kind`` (how the script turns its text into JSON) and the
form itself runs nothing: ``static/playground.js`` sends it. Every value is escaped."""

from __future__ import annotations

import json
from html import escape
from typing import Any

from repligate.models.spec import ModelSpec

# Fields with these words in their names get a multi-line box.
_LONG_TEXT = ("prompt", "text")


def ordered_fields(spec: ModelSpec) -> list[tuple[str, dict[str, Any]]]:
    """The input fields in Replicate's order (``x-order``; unordered ones last)."""
    properties: dict[str, dict[str, Any]] = spec.schemas["Input"]["properties"]
    return sorted(properties.items(), key=lambda item: item[1].get("x-order", 1000))


def resolved(spec: ModelSpec, field: dict[str, Any]) -> dict[str, Any]:
    """The field with an ``allOf: [{$ref}]`` (how cog writes choices) merged in."""
    merged = dict(field)
    for part in field.get("allOf", []):
        ref = part.get("$ref", "")
        merged = {**spec.schemas.get(ref.rsplit("/", 1)[-1], {}), **merged}
    return merged


def _kind(field: dict[str, Any]) -> str:
    """What the script makes of the control's text: file, integer, number, boolean, string."""
    if field.get("format") == "uri":
        return "file"
    kind = str(field.get("type", "string"))
    return kind if kind in ("integer", "number", "boolean") else "string"


def _value(value: Any) -> str:
    """A default as the text a control holds (strings as they are, the rest as JSON)."""
    return escape(value if isinstance(value, str) else json.dumps(value), quote=True)


def _select(name: str, field: dict[str, Any], kind: str, required: bool) -> str:
    default = field.get("default")
    options = [] if required or "default" in field else ['<option value="">(none)</option>']
    for choice in field["enum"]:
        chosen = " selected" if choice == default else ""
        options.append(f'<option value="{_value(choice)}"{chosen}>{escape(str(choice))}</option>')
    return (
        f'<select id="in-{escape(name)}" name="{escape(name)}" data-kind="{kind}">'
        f"{''.join(options)}</select>"
    )


def _number(name: str, field: dict[str, Any], kind: str, required: bool) -> str:
    attrs = [f'type="number" step="{"1" if kind == "integer" else "any"}"']
    for bound in ("minimum", "maximum"):
        if bound in field:
            attrs.append(f'{bound[:3]}="{_value(field[bound])}"')
    if "default" in field:
        attrs.append(f'value="{_value(field["default"])}"')
    if required:
        attrs.append("required")
    control = (
        f'<input id="in-{escape(name)}" name="{escape(name)}" data-kind="{kind}" {" ".join(attrs)}>'
    )
    if "minimum" in field and "maximum" in field:
        # A slider beside the field, kept in step with it by the script; it has no name,
        # so only the number field is sent.
        step = "1" if kind == "integer" else "any"
        start = field.get("default", field["minimum"])
        control += (
            f' <input type="range" class="slider" data-for="in-{escape(name)}" '
            f'min="{_value(field["minimum"])}" max="{_value(field["maximum"])}" '
            f'step="{step}" value="{_value(start)}" aria-label="{escape(name)} slider">'
        )
    return control


def _control(name: str, field: dict[str, Any], required: bool) -> str:
    kind = _kind(field)
    ident = f'id="in-{escape(name)}" name="{escape(name)}" data-kind="{kind}"'
    need = " required" if required else ""
    if "enum" in field:
        return _select(name, field, kind, required)
    if kind in ("integer", "number"):
        return _number(name, field, kind, required)
    if kind == "boolean":
        checked = " checked" if field.get("default") is True else ""
        return f'<input type="checkbox" {ident}{checked}>'
    if kind == "file":
        return (
            f'<input type="url" {ident} placeholder="https://… or data:…"{need}>'
            f' <input type="file" id="upload-{escape(name)}" data-upload-for="in-{escape(name)}"'
            f' aria-label="upload {escape(name)}">'
        )
    default = f"{escape(str(field['default']))}" if "default" in field else ""
    if any(word in name for word in _LONG_TEXT):
        return f'<textarea {ident} rows="3"{need}>{default}</textarea>'
    value = f' value="{_value(field["default"])}"' if "default" in field else ""
    return f'<input type="text" {ident}{value}{need}>'


def input_form(spec: ModelSpec) -> str:
    """The run form: one labelled control per input field, in order, and a Run button."""
    required = set(spec.schemas["Input"].get("required", []))
    rows = []
    for name, raw in ordered_fields(spec):
        field = resolved(spec, raw)
        label = escape(field.get("title") or name)
        mark = ' <span class="muted">(required)</span>' if name in required else ""
        rows.append(
            f'<tr data-field="{escape(name)}"><th><label for="in-{escape(name)}">{label}'
            f"</label>{mark}</th><td>{_control(name, field, name in required)}"
            f'<div class="muted">{escape(field.get("description", ""))}</div></td></tr>'
        )
    version = escape(f"{spec.ref}:{spec.version}", quote=True)
    return f"""<form id="run-form" data-version="{version}">
<table>{"".join(rows)}</table>
<p><button type="submit" id="run">Run</button></p>
</form>"""

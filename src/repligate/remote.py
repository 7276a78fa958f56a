"""Running a prediction on a server over HTTP, for ``repligate predict``: the same API any
client uses (Replicate's too), so the CLI exercises exactly what users call."""

from __future__ import annotations

import base64
import json
import mimetypes
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

TERMINAL = {"succeeded", "failed", "canceled"}


class RemoteError(Exception):
    """The server refused the request or the prediction did not succeed."""


def parse_input(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs: a value is JSON when it parses (numbers, booleans), else text;
    ``key=@path`` sends the file as a data URI."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise RemoteError(f"input {pair!r} is not key=value")
        if raw.startswith("@"):
            values[key] = data_uri(Path(raw[1:]))
            continue
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return values


def data_uri(path: Path) -> str:
    if not path.is_file():
        raise RemoteError(f"no such file: {path}")
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{content_type};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    lines = [f"HTTP {response.status_code}: {body.get('title') or ''} {body.get('detail', '')}"]
    lines += [f"  {f['field']}: {f['description']}" for f in body.get("invalid_fields", [])]
    return "\n".join(line.rstrip() for line in lines)


def run(
    client: httpx.Client,
    ref: str,
    inputs: dict[str, Any],
    *,
    on_logs: Callable[[str], None],
    poll_interval: float = 0.5,
) -> dict[str, Any]:
    """Create the prediction (``owner/name`` or ``owner/name:version``), follow its logs
    until it ends, and return it; RemoteError unless it succeeded."""
    if ":" in ref:
        response = client.post("/v1/predictions", json={"version": ref, "input": inputs})
    else:
        response = client.post(f"/v1/models/{ref}/predictions", json={"input": inputs})
    if response.status_code >= 400:
        raise RemoteError(_problem(response))
    prediction: dict[str, Any] = response.json()
    shown = 0
    while True:
        logs = prediction.get("logs") or ""
        if len(logs) > shown:
            on_logs(logs[shown:])
            shown = len(logs)
        if prediction["status"] in TERMINAL:
            break
        time.sleep(poll_interval)
        response = client.get(f"/v1/predictions/{prediction['id']}")
        if response.status_code >= 400:
            raise RemoteError(_problem(response))
        prediction = response.json()
    if prediction["status"] != "succeeded":
        raise RemoteError(
            f"prediction {prediction['id']} {prediction['status']}: "
            f"{prediction.get('error') or ''}".rstrip(": ")
        )
    return prediction


def download(client: httpx.Client, urls: list[str], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    saved = []
    for url in urls:
        target = directory / url.rsplit("/", 1)[-1]
        response = client.get(url)
        if response.status_code >= 400:
            raise RemoteError(f"downloading {url}: {_problem(response)}")
        target.write_bytes(response.content)
        saved.append(target)
    return saved

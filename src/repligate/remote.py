"""Running a prediction on a server over HTTP, for ``repligate predict``: the same API any
client uses (Replicate's too), so the CLI exercises exactly what users call."""

from __future__ import annotations

import base64
import itertools
import json
import mimetypes
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

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


def download(
    client: httpx.Client, prediction_id: str, urls: list[str], directory: Path
) -> list[Path]:
    """Save each output under ``directory/<prediction id>/`` by the name its URL ends in.
    Nothing is ever overwritten: a name already taken gets ``-1``, ``-2``… before its
    suffix. Returns the paths written, in output order."""
    folder = directory / _safe_name(prediction_id, "prediction")
    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    for index, url in enumerate(urls):
        response = client.get(url)
        if response.status_code >= 400:
            raise RemoteError(f"downloading {url}: {_problem(response)}")
        name = _safe_name(urlsplit(url).path.rsplit("/", 1)[-1], f"output-{index}")
        saved.append(_write_new(folder / name, response.content))
    return saved


def _safe_name(raw: str, fallback: str) -> str:
    """A plain file name from what a server sent: no directories, nothing hidden."""
    name = unquote(raw).replace("\\", "/").rsplit("/", 1)[-1]
    return name if name and not name.startswith(".") else fallback


def _write_new(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path``, or to the first free ``stem-N.suffix`` beside it; the
    exclusive open makes "free" hold even against another process writing there."""
    for attempt in itertools.count():
        candidate = path if attempt == 0 else path.with_stem(f"{path.stem}-{attempt}")
        try:
            with candidate.open("xb") as file:
                file.write(data)
        except FileExistsError:
            continue
        return candidate
    raise AssertionError("unreachable")

"""Flux's ``hf_lora``: the five forms the originals accept, and their download into the
shared weights cache (runners/weights_cache.py). models-2.md §1 lists the forms and the
order the originals test them in:

1. a Hub repo id ``owner/name``: the repo's LoRA file (``pytorch_lora_weights.safetensors``
   if it has one, else its first top-level ``.safetensors``, as diffusers picks);
2. a Replicate training URL (``https://replicate.delivery/.../trained_model.tar``, or any
   URL of a ``.tar``): the trainer's ``output/flux_train_replicate/lora.safetensors``;
3. a Hub file URL ``https://huggingface.co/<owner>/<repo>/(resolve|blob)/<rev>/<file>``;
4. a civitai download URL ``https://civitai.com/api/download/models/<id>...``;
5. any URL of a ``.safetensors`` file.

Every download goes through the server's Fetcher (size cap, SSRF guard, time limit); the
Hub forms are fetched from ``hub_url`` (``https://huggingface.co``) over its public HTTP
API, so they follow the same rules. A repo id asks the Hub for the repo's current commit
each time and caches per commit: a repo that changes is downloaded again.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from repligate.errors import InvalidField
from repligate.fetch import Fetcher, FetchRefused
from repligate.runners.weights_cache import DownloadedWeightsError, WeightsCache, extract_tar

FIELD = "hf_lora"
ACCEPTED_FORMS = (
    "a Hugging Face repo id (owner/name), a Replicate training URL (.../trained_model.tar), "
    "a Hugging Face file URL (https://huggingface.co/<owner>/<repo>/resolve/<revision>/"
    "<file>), a civitai download URL (https://civitai.com/api/download/models/<id>), or "
    "the URL of a .safetensors file"
)
# The file inside a Replicate Flux training tarball (ostris ai-toolkit's output layout).
TRAINING_TAR_LORA = "output/flux_train_replicate/lora.safetensors"
LORA_FILE = "lora.safetensors"  # the name a downloaded LoRA gets in its cache entry
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
_HUB_HOSTS = {"huggingface.co", "hf.co"}
_CIVITAI_HOSTS = {"civitai.com", "www.civitai.com"}
# Files in a Hub repo that are never the LoRA (diffusers skips them too).
_NOT_LORA = ("scheduler", "optimizer", "checkpoint")
_DIFFUSERS_LORA_NAME = "pytorch_lora_weights.safetensors"


class LoraError(DownloadedWeightsError):
    """The LoRA could not be fetched or loaded; the message says why."""


@dataclass(frozen=True)
class LoraSource:
    """One ``hf_lora`` value, understood: ``kind`` is "hub-repo" (``target`` is the repo
    id), "training-tar" or "file" (``target`` is the URL to download)."""

    value: str
    kind: str
    target: str


def parse(value: str, hub_url: str = "https://huggingface.co") -> LoraSource | None:
    """The source ``value`` names; None for no LoRA (absent or ``""``). Raises LoraError
    naming the accepted forms for anything else."""
    text = value.strip()
    if not text:
        return None
    if _REPO_ID.fullmatch(text) and ".." not in text:
        return LoraSource(text, "hub-repo", text)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LoraError(
            f"{FIELD}: {value!r} is not a LoRA this server can load; give {ACCEPTED_FORMS}"
        )
    host = parts.hostname.lower()
    path = parts.path
    if path.lower().endswith(".tar"):
        return LoraSource(text, "training-tar", text)
    hub = urlsplit(hub_url)
    segments = [s for s in path.split("/") if s]
    on_hub = host in _HUB_HOSTS or (host, parts.port) == (hub.hostname, hub.port)
    if on_hub and len(segments) >= 5 and segments[2] in ("resolve", "blob"):
        owner, repo, _, revision, *file = segments
        url = f"{hub_url.rstrip('/')}/{owner}/{repo}/resolve/{revision}/{'/'.join(file)}"
        return LoraSource(text, "file", url)
    if host in _CIVITAI_HOSTS and path.startswith("/api/download/models/"):
        return LoraSource(text, "file", text)
    if path.lower().endswith(".safetensors"):
        return LoraSource(text, "file", text)
    raise LoraError(f"{FIELD}: {value!r} is not a LoRA this server can load; give {ACCEPTED_FORMS}")


def invalid_field(
    value: str | None, hub_url: str = "https://huggingface.co"
) -> InvalidField | None:
    """The create-time problem with ``value``, if it is none of the accepted forms."""
    if value is None:
        return None
    try:
        parse(value, hub_url)
    except LoraError as exc:
        return InvalidField("hf_lora_form", f"input.{FIELD}", str(exc).removeprefix(f"{FIELD}: "))
    return None


def load(source: LoraSource, cache: WeightsCache, fetcher: Fetcher, hub_url: str) -> dict[str, Any]:
    """The LoRA's tensors (on the CPU), from the cache or downloaded into it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if source.kind == "hub-repo":
        url = _hub_repo_file(source.target, fetcher, hub_url)
        key, fill = f"{FIELD}:{url}", _file_filler(url, fetcher, cache)
    elif source.kind == "training-tar":
        key, fill = f"{FIELD}:tar:{source.target}", _tar_filler(source.target, fetcher, cache)
    else:
        key, fill = f"{FIELD}:{source.target}", _file_filler(source.target, fetcher, cache)
    try:
        with cache.entry(key, fill) as directory:
            return load_file(directory / LORA_FILE)
    except FetchRefused as exc:
        raise LoraError(_with_hub_hint(str(exc), source)) from None
    except (SafetensorError, OSError) as exc:
        raise LoraError(f"{FIELD}: {source.value} is not a .safetensors file: {exc}") from None


def _file_filler(url: str, fetcher: Fetcher, cache: WeightsCache) -> Any:
    def fill(directory: Path) -> None:
        fetcher.download_to(
            url, directory / LORA_FILE, field=FIELD, max_bytes=cache.max_download_bytes
        )

    return fill


def _tar_filler(url: str, fetcher: Fetcher, cache: WeightsCache) -> Any:
    def fill(directory: Path) -> None:
        archive = directory.with_suffix(".tar")  # beside the entry: never in it
        unpacked = directory.with_suffix(".unpacked")
        try:
            fetcher.download_to(url, archive, field=FIELD, max_bytes=cache.max_download_bytes)
            extract_tar(archive, unpacked, max_bytes=cache.max_download_bytes, field=FIELD)
            _lora_in_tar(unpacked).rename(directory / LORA_FILE)
        finally:
            archive.unlink(missing_ok=True)
            _remove_tree(unpacked)

    return fill


def _lora_in_tar(root: Path) -> Path:
    """The trainer's LoRA, else the tarball's only ``.safetensors`` file."""
    expected = root / TRAINING_TAR_LORA
    if expected.is_file():
        return expected
    found = sorted(p for p in root.rglob("*.safetensors") if p.is_file())
    if len(found) == 1:
        return found[0]
    raise LoraError(
        f"{FIELD}: the tarball has no {TRAINING_TAR_LORA}"
        + (f" and several .safetensors files ({', '.join(p.name for p in found)})" if found else "")
    )


def _hub_repo_file(repo: str, fetcher: Fetcher, hub_url: str) -> str:
    """The download URL of ``repo``'s LoRA at its current commit, from the Hub's API."""
    base = hub_url.rstrip("/")
    try:
        info = fetcher.fetch(f"{base}/api/models/{quote(repo)}", field=FIELD)
    except FetchRefused as exc:
        raise LoraError(_with_hub_hint(str(exc), LoraSource(repo, "hub-repo", repo))) from None
    try:
        document = json.loads(info.data)
        revision = str(document.get("sha") or "main")
        names = [str(s["rfilename"]) for s in document.get("siblings", [])]
    except (ValueError, TypeError, KeyError, AttributeError):
        raise LoraError(
            f"{FIELD}: the Hub's answer about {repo} is not one we understand"
        ) from None
    candidates = [
        name
        for name in names
        if name.endswith(".safetensors") and not any(word in name for word in _NOT_LORA)
    ]
    if _DIFFUSERS_LORA_NAME in candidates:
        candidates = [_DIFFUSERS_LORA_NAME]
    if not candidates:
        raise LoraError(f"{FIELD}: the Hugging Face repo {repo} has no .safetensors file")
    # Several: the first, as diffusers does; a Hub file URL picks another.
    return f"{base}/{repo}/resolve/{revision}/{quote(candidates[0])}"


def _with_hub_hint(message: str, source: LoraSource) -> str:
    if source.kind == "hub-repo" and re.search(r"answered (401|403|404)", message):
        return (
            f"{FIELD}: the Hugging Face repo {source.target} was not found, or is private or "
            "gated (not supported for LoRAs here: give the URL of a public .safetensors file)"
        )
    return message


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)

"""Trained weights from Replicate's SDXL trainer, named by URL in ``replicate_weights``.

The trainer's tarball holds ``unet.safetensors`` (a whole UNet, or the part it trained)
or ``lora.safetensors`` (LoRA attention processors), plus ``embeddings.pti`` (new token
vectors for both text encoders: keys ``text_encoders_0`` / ``text_encoders_1``) and
``special_params.json`` (e.g. ``{"TOK": "<s0><s1>"}``, substituted into the prompt).

Tarballs are downloaded through the server's Fetcher (size cap, SSRF guard), extracted
with tarfile's ``data`` filter (no absolute paths, no ``..``, no links out, no devices)
into ``<dir>/<sha256(url)[:16]>/``, and kept in a disk cache capped in bytes: least
recently used entries go first (recency is the directory's mtime, so it survives a
restart). The original predictor caches by URL in the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repligate.errors import PredictionFailure
from repligate.fetch import Fetcher

FIELD = "replicate_weights"


class TrainedWeightsError(PredictionFailure, ValueError):
    """The trained weights could not be used; the message says why (fails the prediction)."""


@dataclass
class TrainedWeights:
    """One tarball's contents, read into memory (CPU tensors)."""

    unet: dict[str, Any] | None = None
    lora: dict[str, Any] | None = None
    # text_encoders_0 (for text_encoder), text_encoders_1 (for text_encoder_2)
    embeddings: dict[str, Any] = field(default_factory=dict)
    token_map: dict[str, str] = field(default_factory=dict)

    def substitute(self, prompt: str) -> str:
        """Trained tokens (``TOK``) replaced by the new tokens, as the original does."""
        for token, replacement in self.token_map.items():
            prompt = prompt.replace(token, replacement)
        return prompt


def read_trained_weights(directory: Path) -> TrainedWeights:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = _content_root(directory)
    try:
        weights = TrainedWeights()
        if (root / "unet.safetensors").is_file():
            weights.unet = load_file(root / "unet.safetensors")
        elif (root / "lora.safetensors").is_file():
            weights.lora = load_file(root / "lora.safetensors")
        else:
            raise TrainedWeightsError(
                f"{FIELD}: the tarball has neither unet.safetensors nor lora.safetensors"
            )
        if (root / "embeddings.pti").is_file():
            weights.embeddings = load_file(root / "embeddings.pti")
        if (root / "special_params.json").is_file():
            token_map = json.loads((root / "special_params.json").read_text(encoding="utf-8"))
            if not isinstance(token_map, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in token_map.items()
            ):
                raise TrainedWeightsError(f"{FIELD}: special_params.json is not a token map")
            weights.token_map = token_map
    except (SafetensorError, OSError, ValueError) as exc:
        if isinstance(exc, TrainedWeightsError):
            raise
        raise TrainedWeightsError(f"{FIELD}: the tarball's files cannot be read: {exc}") from exc
    return weights


def _content_root(directory: Path) -> Path:
    """The files at the top of the tarball, or inside its one top-level folder."""
    entries = list(directory.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return directory


class TrainedWeightsCache:
    def __init__(self, root: Path, *, max_bytes: int, max_download_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.max_download_bytes = max_download_bytes
        # One at a time: a download, an extraction or a read never races an eviction.
        self._lock = threading.Lock()

    def load(self, url: str, fetcher: Fetcher) -> TrainedWeights:
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            directory = self.root / hashlib.sha256(url.encode()).hexdigest()[:16]
            if not directory.is_dir():
                self._download(url, fetcher, directory)
            os.utime(directory)  # most recently used
            weights = read_trained_weights(directory)
            self._evict(keep=directory)
            return weights

    def _download(self, url: str, fetcher: Fetcher, directory: Path) -> None:
        scratch = self.root / f"tmp-{uuid.uuid4().hex}"
        archive = scratch.with_suffix(".tar")
        try:
            fetcher.download_to(url, archive, field=FIELD, max_bytes=self.max_download_bytes)
            scratch.mkdir()
            self._extract(archive, scratch)
            scratch.rename(directory)
        finally:
            archive.unlink(missing_ok=True)
            shutil.rmtree(scratch, ignore_errors=True)

    def _extract(self, archive: Path, target: Path) -> None:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                # A compressed tarball may unpack far larger than it downloaded.
                total = sum(m.size for m in members if m.isfile())
                if total > self.max_download_bytes:
                    raise TrainedWeightsError(
                        f"{FIELD}: the tarball unpacks to {total} bytes, more than "
                        f"{self.max_download_bytes}"
                    )
                tar.extractall(target, members=members, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise TrainedWeightsError(f"{FIELD}: not a tarball we can extract: {exc}") from exc

    def _evict(self, keep: Path) -> None:
        entries = []
        for entry in self.root.iterdir():
            if entry.is_dir() and not entry.name.startswith("tmp-"):
                entries.append((entry.stat().st_mtime, _size(entry), entry))
        total = sum(size for _, size, _ in entries)
        for _, size, entry in sorted(entries, key=lambda e: e[0]):
            if total <= self.max_bytes:
                break
            if entry != keep:
                shutil.rmtree(entry, ignore_errors=True)
                total -= size


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


class ModuleUse:
    """Calls on shared modules: plain calls run together; a call that changes the modules
    for itself (LoRA layers, swapped embeddings) waits for them and runs alone. Waiting
    exclusive calls hold off new shared ones, so they are not starved."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting_exclusive = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._waiting_exclusive:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting_exclusive += 1
            while self._exclusive or self._shared:
                self._cond.wait()
            self._waiting_exclusive -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()

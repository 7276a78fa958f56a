"""Trained weights from Replicate's SDXL trainer, named by URL in ``replicate_weights``.

The trainer's tarball holds ``unet.safetensors`` (a whole UNet, or the part it trained)
or ``lora.safetensors`` (LoRA attention processors), plus ``embeddings.pti`` (new token
vectors for both text encoders: keys ``text_encoders_0`` / ``text_encoders_1``) and
``special_params.json`` (e.g. ``{"TOK": "<s0><s1>"}``, substituted into the prompt).

Tarballs are downloaded through the server's Fetcher (size cap, SSRF guard), extracted
with tarfile's ``data`` filter into the disk cache that every model's downloaded weights
share (runners/weights_cache.py), by URL as the original predictor caches them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repligate.fetch import Fetcher
from repligate.runners.weights_cache import DownloadedWeightsError, WeightsCache, extract_tar

FIELD = "replicate_weights"


class TrainedWeightsError(DownloadedWeightsError):
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


def load_trained_weights(cache: WeightsCache, url: str, fetcher: Fetcher) -> TrainedWeights:
    """The tarball at ``url``, from the shared cache or downloaded and unpacked into it."""

    def fill(directory: Path) -> None:
        archive = directory.with_suffix(".tar")  # beside the entry: not in what is read
        try:
            fetcher.download_to(url, archive, field=FIELD, max_bytes=cache.max_download_bytes)
            extract_tar(archive, directory, max_bytes=cache.max_download_bytes, field=FIELD)
        finally:
            archive.unlink(missing_ok=True)

    with cache.entry(url, fill) as directory:
        return read_trained_weights(directory)

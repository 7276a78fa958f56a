"""Where a model's weights come from: ``<weights_dir>/<owner>__<name>/`` if it exists,
else the model's Hugging Face repo. Loading errors become one clear message."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from repligate.models.spec import ModelSpec

log = logging.getLogger(__name__)
T = TypeVar("T")

# Written by repligate.testing.tiny_weights next to every pipeline it builds.
RANDOM_WEIGHTS_MARKER = "REPLIGATE_RANDOM_WEIGHTS"


class WeightsUnavailable(RuntimeError):
    """The weights could not be loaded; the message says what to set."""


class WeightsLocator:
    def __init__(self, weights_dir: Path | None) -> None:
        self.weights_dir = weights_dir

    def local_dir(self, spec: ModelSpec) -> Path | None:
        if self.weights_dir is None:
            return None
        candidate = self.weights_dir / spec.key
        return candidate if candidate.is_dir() else None

    def source(self, spec: ModelSpec) -> str:
        local = self.local_dir(spec)
        if local is not None:
            return str(local)
        if spec.default_weights is None:
            raise WeightsUnavailable(self._advice(spec, "it has no default repo"))
        return spec.default_weights

    def is_random(self, spec: ModelSpec) -> bool:
        local = self.local_dir(spec)
        return local is not None and (local / RANDOM_WEIGHTS_MARKER).exists()

    def load(self, spec: ModelSpec, loader: Callable[[str], T]) -> T:
        """Call ``loader(source)``; turn any loading failure into WeightsUnavailable."""
        source = self.source(spec)
        try:
            loaded = loader(source)
        except Exception as exc:
            raise WeightsUnavailable(
                self._advice(spec, f"loading {source!r} failed: {type(exc).__name__}: {exc}")
            ) from exc
        if self.is_random(spec):
            log.warning(
                "%s: loaded tiny RANDOM weights from %s; its outputs are noise, for trying "
                "the API only",
                spec.ref,
                source,
            )
        return loaded

    def _advice(self, spec: ModelSpec, why: str) -> str:
        where = (
            f"{self.weights_dir / spec.key}"
            if self.weights_dir
            else f"$REPLIGATE_WEIGHTS_DIR/{spec.key}"
        )
        return (
            f"Weights for {spec.ref} are not available ({why}). Put the model in diffusers "
            f"save_pretrained layout at {where} (set REPLIGATE_WEIGHTS_DIR), or make the "
            f"Hugging Face hub reachable for {spec.default_weights!r}."
        )

"""Where a model's weights come from: ``<weights_dir>/<owner>__<name>/`` if it exists,
else the model's Hugging Face repo. A loading failure becomes one short message that says
what went wrong and what to set, without the libraries' own advice (their
``local_files_only`` and "see the stack trace above" mean nothing to a user of the API)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from repligate.errors import PredictionFailure

if TYPE_CHECKING:
    from repligate.models.spec import ModelSpec

log = logging.getLogger(__name__)
T = TypeVar("T")

# Written by repligate.testing.tiny_weights next to every pipeline it builds.
RANDOM_WEIGHTS_MARKER = "REPLIGATE_RANDOM_WEIGHTS"

# Exceptions (by class name: huggingface_hub, requests and httpx need not be imported)
# that mean the hub could not be asked, so only a cached copy could have served.
_HUB_UNREACHABLE = {
    "OfflineModeIsEnabled",
    "LocalEntryNotFoundError",
    "ConnectionError",
    "ConnectError",
    "ConnectTimeout",
    "NetworkError",
    "Timeout",
}


class WeightsUnavailable(PredictionFailure):
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
            raise self.unavailable(spec, None, "it has no Hugging Face repo to load from")
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
            if not about_files(exc):
                raise  # e.g. out of memory moving it to the device: not a weights problem
            local = self.local_dir(spec)
            raise self.failed(spec, exc, source, None if local else spec.default_weights) from None
        if self.is_random(spec):
            log.warning(
                "%s: loaded tiny RANDOM weights from %s; its outputs are noise, for trying "
                "the API only",
                spec.ref,
                source,
            )
        return loaded

    def failed(
        self,
        spec: ModelSpec,
        exc: Exception,
        source: str,
        repo: str | None,
        *,
        what: str | None = None,
        subdir: str = "",
    ) -> WeightsUnavailable:
        """The error for ``exc`` raised loading ``source`` (the hub ``repo`` if not None;
        else a local directory). ``what`` and ``subdir`` name a part, e.g. SDXL's refiner."""
        # Loud only for the operator who asks: the chain repeats what the message says.
        log.debug("loading %s for %s failed", source, spec.ref, exc_info=exc)
        why = _hub_failure(exc, repo) if repo else f"loading {source} failed: {_first_line(exc)}"
        return self.unavailable(spec, repo, why, what=what, subdir=subdir)

    def unavailable(
        self,
        spec: ModelSpec,
        repo: str | None,
        why: str,
        *,
        what: str | None = None,
        subdir: str = "",
    ) -> WeightsUnavailable:
        folder = f"{spec.key}/{subdir}".rstrip("/") + "/"
        if self.weights_dir is None:
            where = f"$REPLIGATE_WEIGHTS_DIR/{folder} (set REPLIGATE_WEIGHTS_DIR)"
        else:
            where = f"{self.weights_dir / folder}/ (REPLIGATE_WEIGHTS_DIR={self.weights_dir})"
        hub = (
            f", or give this server network access to the Hugging Face repo {repo}" if repo else ""
        )
        return WeightsUnavailable(
            f"{what or f'The weights of {spec.ref}'} are not available: {why.rstrip('.')}.\n"
            f"Put them in {where}{hub}. To try the API without them, `make demo` serves tiny "
            "random weights."
        )


def about_files(exc: BaseException) -> bool:
    """Whether a loader's exception means the weights' files (missing, unreadable, not
    the layout expected), rather than e.g. the device running out of memory."""
    if isinstance(exc, (OSError, ValueError)):
        return True
    return any(type(e).__name__ in _HUB_UNREACHABLE for e in _chain(exc))


def _hub_failure(exc: BaseException, repo: str) -> str:
    chain = _chain(exc)
    names = {type(e).__name__ for e in chain}
    if "GatedRepoError" in names:
        return f"the Hugging Face repo {repo} is gated: accept its terms and set HF_TOKEN"
    if "RepositoryNotFoundError" in names:
        return f"the Hugging Face repo {repo} was not found (or is private: set HF_TOKEN)"
    if "OfflineModeIsEnabled" in names:
        return f"the Hugging Face hub is off (HF_HUB_OFFLINE) and {repo} is not in its cache"
    if names & _HUB_UNREACHABLE:
        return f"the Hugging Face hub is not reachable and {repo} is not in its cache"
    return f"loading {repo} failed: {_first_line(chain[-1])}"


def _chain(exc: BaseException) -> list[BaseException]:
    chain = [exc]
    while len(chain) < 16:
        nxt = chain[-1].__cause__ or chain[-1].__context__
        if nxt is None or nxt in chain:
            break
        chain.append(nxt)
    return chain


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if len(text) > 300:
        text = text[:300] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

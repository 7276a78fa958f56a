"""Which models run where: ``local``, ``replicate`` or ``auto`` per model.

``auto`` is local when the model has a runner, its requirements are installed and its
weights are here (the weights directory, or the Hugging Face cache); otherwise relayed
when upstream keys are set; otherwise local (which then says what is missing). Decided
once per model and kept: nothing here imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from repligate.models.spec import ModelSpec
from repligate.providers.local import LocalProvider
from repligate.settings import Settings

LOCAL = "local"
REPLICATE = "replicate"
AUTO = "auto"


def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")), "huggingface"
    )
    return Path(home) / "hub"


class RoutePlan:
    def __init__(self, settings: Settings, local: LocalProvider) -> None:
        self._default = settings.route
        self._routes = dict(settings.routes)
        self._weights_dir = settings.weights_dir
        self._relay_ready = bool(settings.upstream_token_list())
        self._local = local
        self._decided: dict[str, str] = {}

    def configured(self, spec: ModelSpec) -> str:
        """The route as configured (``auto`` included)."""
        return self._routes.get(spec.ref, self._default)

    def route(self, spec: ModelSpec) -> str:
        """Where ``spec`` runs: ``local`` or ``replicate``."""
        if spec.ref not in self._decided:
            chosen = self.configured(spec)
            if chosen == AUTO:
                # Without upstream keys there is nothing to choose (and the local
                # provider's own checks stay for create time).
                relay = self._relay_ready and not (
                    self._local.unavailable(spec) is None and self._has_weights(spec)
                )
                chosen = REPLICATE if relay else LOCAL
            self._decided[spec.ref] = chosen
        return self._decided[spec.ref]

    def relayed(self, spec: ModelSpec) -> bool:
        return self.route(spec) == REPLICATE

    def any_relayed(self, specs: list[ModelSpec]) -> bool:
        return any(self.relayed(spec) for spec in specs)

    def _has_weights(self, spec: ModelSpec) -> bool:
        if self._weights_dir is not None and (self._weights_dir / spec.key).is_dir():
            return True
        if spec.default_weights is None:
            return False
        repo = spec.default_weights
        return (_hub_cache() / f"models--{repo.replace('/', '--')}").is_dir()

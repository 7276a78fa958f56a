"""The runner contract: what a model's runner gets and what it must do."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from repligate.events import Event
from repligate.fetch import Fetcher
from repligate.runners.components import SharedModules
from repligate.runners.safety import LazySafetyChecker
from repligate.runners.threads import ThreadPolicy

if TYPE_CHECKING:
    from repligate.models.spec import ModelSpec
    from repligate.runners.cache import PipelineCache
    from repligate.runners.device import DeviceChoice
    from repligate.runners.weights import WeightsLocator
    from repligate.runners.weights_cache import WeightsCache


class RunContext(Protocol):
    """Given to a runner for one prediction."""

    prediction_id: str

    def emit(self, event: Event) -> None: ...

    def canceled(self) -> bool: ...


class Runner(Protocol):
    def run(self, inputs: dict[str, Any], ctx: RunContext) -> Any:
        """Run one prediction. Return the output in its JSON shape, with ``OutputFile``
        values where files go. Raise ``events.Canceled`` when ``ctx.canceled()``; any
        other exception fails the prediction with its message."""
        ...


@dataclass(frozen=True)
class RunnerEnv:
    """What every local runner on this server shares."""

    device: DeviceChoice
    weights: WeightsLocator
    pipelines: PipelineCache
    # For files a runner fetches itself (e.g. trained weights named by URL).
    fetcher: Fetcher
    png_compress_level: int = 4
    # The SD family's safety checker (runners/safety.py); off unless the app wires one.
    safety: LazySafetyChecker = field(default_factory=LazySafetyChecker.disabled)
    # Pipelines built from one weights source share their modules (runners/components.py).
    modules: SharedModules = field(default_factory=SharedModules)
    # Weights downloaded by URL (SDXL's replicate_weights, Flux's hf_lora), one disk cache
    # for all models; None: such inputs are refused.
    weights_cache: WeightsCache | None = None
    # Where hf_lora's Hub forms (a repo id, a huggingface.co file URL) are downloaded from.
    hub_url: str = "https://huggingface.co"
    # Torch's thread count on the inference thread (runners/threads.py); by default torch's.
    threads: ThreadPolicy = field(default_factory=ThreadPolicy)


RunnerFactory = Callable[["RunnerEnv", "ModelSpec"], Runner]

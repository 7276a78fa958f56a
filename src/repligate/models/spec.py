"""What one model module declares: identity, version, schema, requirements, weights and
runner."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from repligate.errors import InvalidField
    from repligate.runners.base import RunnerFactory


@dataclass(frozen=True)
class Requirements:
    """What a model's local runner imports, and what a user installs to get it. Checked
    by name only (importlib's find_spec): nothing is imported to check."""

    modules: tuple[str, ...]
    install: str


_LOCAL_EXTRA = (
    "install repligate with its `local` extra (pip install 'repligate[local]', or make install)"
)
# The diffusers runners (runners/stable_diffusion.py, runners/sdxl.py).
DIFFUSERS = Requirements(("torch", "diffusers", "transformers"), _LOCAL_EXTRA)
# FLUX LoRAs load through peft (diffusers' load_lora_weights).
DIFFUSERS_WITH_PEFT = Requirements((*DIFFUSERS.modules, "peft"), _LOCAL_EXTRA)
# cjwbw/rembg: the rembg library on onnxruntime, no torch (the `rembg` extra).
REMBG = Requirements(
    ("rembg", "onnxruntime"),
    "install repligate with its `rembg` extra (pip install 'repligate[rembg]')",
)


@dataclass(frozen=True)
class ModelSpec:
    owner: str
    name: str
    version: str
    # The day Replicate published this version (research notes; the hour is not known).
    version_created_at: str
    description: str
    # What its local runner needs installed; without it the model is refused at create,
    # naming what to install (providers/local.py).
    requires: Requirements
    # The Hugging Face repo the runner loads when no local weights directory exists.
    default_weights: str | None = None
    # Builds the runner for this model on this server; None = no local runner yet.
    runner: RunnerFactory | None = None
    # Checks the schema cannot express (e.g. sizes that must be multiples of 8), run on
    # the input with defaults filled in; each problem refuses the prediction at create.
    check_input: Callable[[dict[str, Any]], list[InvalidField]] | None = None
    cog_version: str = "0.8.6"

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.name}"

    @property
    def key(self) -> str:
        """Directory-safe name: ``owner__name`` (weights dirs, schema files)."""
        return f"{self.owner}__{self.name}"

    @cached_property
    def schemas(self) -> dict[str, Any]:
        """``components.schemas`` as Replicate publishes it (Input, Output, enums)."""
        text = resources.files("repligate.models").joinpath(f"schemas/{self.key}.json")
        document = json.loads(text.read_text(encoding="utf-8"))
        if document["version"] != self.version:
            raise ValueError(f"schema file of {self.ref} is for another version")
        schemas: dict[str, Any] = document["components"]["schemas"]
        return schemas

    def openapi_schema(self) -> dict[str, Any]:
        return {"components": {"schemas": self.schemas}}

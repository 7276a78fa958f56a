"""The provider interface."""

from __future__ import annotations

from typing import Any, Protocol

from repligate.models.spec import ModelSpec
from repligate.runners.base import RunContext


class Provider(Protocol):
    def supports(self, spec: ModelSpec) -> bool:
        """Whether this provider can run ``spec`` at all on this server."""
        ...

    def run(self, spec: ModelSpec, inputs: dict[str, Any], ctx: RunContext) -> Any:
        """Run one prediction; the output in its JSON shape with OutputFile values."""
        ...

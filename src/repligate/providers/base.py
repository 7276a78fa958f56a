"""The provider interface."""

from __future__ import annotations

from typing import Any, Protocol

from repligate.models.spec import ModelSpec
from repligate.runners.base import RunContext


class Provider(Protocol):
    def unavailable(self, spec: ModelSpec) -> str | None:
        """Why this provider cannot run ``spec`` on this server, or None when it can."""
        ...

    def run(self, spec: ModelSpec, inputs: dict[str, Any], ctx: RunContext) -> Any:
        """Run one prediction; the output in its JSON shape with OutputFile values."""
        ...

    def loaded(self) -> list[str]:
        """The models (``owner/name``) whose weights are in memory now."""
        ...

"""Version hash <-> owner/name <-> model spec: how a request's ``version`` is resolved."""

from __future__ import annotations

import re
from collections.abc import Iterable

from repligate.errors import InvalidVersion, ModelNotFound
from repligate.models.spec import ModelSpec

_HASH = re.compile(r"^[0-9a-f]{64}$")
_OWNER_NAME = re.compile(r"^([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)$")


class Registry:
    def __init__(self, models: Iterable[ModelSpec]) -> None:
        self._by_version: dict[str, ModelSpec] = {}
        self._by_ref: dict[str, ModelSpec] = {}
        for spec in models:
            self._by_version[spec.version] = spec
            self._by_ref[spec.ref] = spec

    def all(self) -> list[ModelSpec]:
        return list(self._by_ref.values())

    def model(self, owner: str, name: str) -> ModelSpec:
        spec = self._by_ref.get(f"{owner}/{name}")
        if spec is None:
            raise ModelNotFound()
        return spec

    def version(self, owner: str, name: str, version_id: str) -> ModelSpec:
        spec = self.model(owner, name)
        if spec.version != version_id:
            raise ModelNotFound()
        return spec

    def resolve(self, ref: str) -> ModelSpec:
        """A create request's ``version``: bare hash, ``owner/name:hash`` or ``owner/name``."""
        ref = ref.strip()
        if _HASH.match(ref):
            spec = self._by_version.get(ref)
        elif ":" in ref:
            model_ref, _, version_id = ref.partition(":")
            spec = self._by_version.get(version_id)
            if spec is not None and spec.ref != model_ref:
                spec = None
        elif _OWNER_NAME.match(ref):
            spec = self._by_ref.get(ref)
        else:
            spec = None
        if spec is None:
            raise InvalidVersion()
        return spec

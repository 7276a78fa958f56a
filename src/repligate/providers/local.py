"""Runs models in this process with their local runners (diffusers, onnxruntime)."""

from __future__ import annotations

import importlib.util
import threading
from typing import Any

from repligate.models.spec import ModelSpec
from repligate.runners.base import RunContext, Runner, RunnerEnv

# What every local runner imports; without them (a relay-only install) none can run.
_ML_STACK = ("torch", "diffusers", "transformers")


class LocalProvider:
    def __init__(self, env_factory: Any) -> None:
        # The env (device, caches) is built on first use: importing torch costs seconds,
        # and a server that only lists models or rejects input should not pay for it.
        self._env_factory = env_factory
        self._env: RunnerEnv | None = None
        self._runners: dict[str, Runner] = {}
        self._refs: dict[str, str] = {}
        self._missing: list[str] | None = None
        self._lock = threading.Lock()

    def unavailable(self, spec: ModelSpec) -> str | None:
        if spec.runner is None:
            return (
                f"{spec.ref} is known to this server and its input is valid, but this "
                "server has no runner for it yet."
            )
        missing = self._missing_ml_stack()
        if missing:
            return (
                f"{spec.ref} runs locally with the ML stack, and this install lacks "
                f"{', '.join(missing)}: install repligate with its `local` extra "
                "(pip install 'repligate[local]', or make install)."
            )
        return None

    def _missing_ml_stack(self) -> list[str]:
        # Looked up once: what is installed does not change while the server runs.
        if self._missing is None:
            self._missing = [n for n in _ML_STACK if importlib.util.find_spec(n) is None]
        return self._missing

    def env(self) -> RunnerEnv:
        with self._lock:
            if self._env is None:
                self._env = self._env_factory()
            return self._env

    def runner(self, spec: ModelSpec) -> Runner:
        if spec.runner is None:
            raise RuntimeError(f"{spec.ref} has no local runner")
        env = self.env()
        with self._lock:
            if spec.key not in self._runners:
                self._runners[spec.key] = spec.runner(env, spec)
                self._refs[spec.ref] = spec.key
            return self._runners[spec.key]

    def loaded(self) -> list[str]:
        """Models whose pipelines are in memory now."""
        if self._env is None:
            return []
        return [ref for ref in self._refs if self._refs[ref] in self._env.pipelines]

    def run(self, spec: ModelSpec, inputs: dict[str, Any], ctx: RunContext) -> Any:
        return self.runner(spec).run(inputs, ctx)

"""Runs models in this process with their local runners (diffusers, onnxruntime).

A model is refused at create when its runner's own requirements (``ModelSpec.requires``)
are not installed: an ONNX model does not need torch, a relay-only install has neither."""

from __future__ import annotations

import importlib.util
import threading
from typing import Any

from repligate.models.spec import ModelSpec
from repligate.runners.base import RunContext, Runner, RunnerEnv


class LocalProvider:
    def __init__(self, env_factory: Any) -> None:
        # The env (device, caches) is built on first use: importing torch costs seconds,
        # and a server that only lists models or rejects input should not pay for it.
        self._env_factory = env_factory
        self._env: RunnerEnv | None = None
        self._runners: dict[str, Runner] = {}
        self._refs: dict[str, str] = {}
        self._found: dict[str, bool] = {}
        self._lock = threading.Lock()

    def unavailable(self, spec: ModelSpec) -> str | None:
        if spec.runner is None:
            return (
                f"{spec.ref} is known to this server and its input is valid, but this "
                "server has no runner for it yet."
            )
        missing = [name for name in spec.requires.modules if not self._installed(name)]
        if missing:
            return (
                f"{spec.ref} runs locally with {', '.join(spec.requires.modules)}, and this "
                f"install lacks {', '.join(missing)}: {spec.requires.install}."
            )
        return None

    def _installed(self, module: str) -> bool:
        # Looked up once per module: what is installed does not change while the server
        # runs. By name only: importing torch to check would cost seconds.
        if module not in self._found:
            self._found[module] = importlib.util.find_spec(module) is not None
        return self._found[module]

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
        held = self._env.pipelines.keys()
        # A model may cache several pipelines under "<key>/..." (animate-diff: one per
        # motion module and checkpoint).
        return [
            ref
            for ref, key in self._refs.items()
            if any(k == key or k.startswith(key + "/") for k in held)
        ]

    def run(self, spec: ModelSpec, inputs: dict[str, Any], ctx: RunContext) -> Any:
        return self.runner(spec).run(inputs, ctx)

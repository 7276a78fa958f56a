"""Modules shared between pipelines loaded from the same weights source.

stable-diffusion and stable-diffusion-img2img both default to
``stabilityai/stable-diffusion-2-1``: the weights load once, and the second pipeline class
is built around the first one's modules with ``from_pipe`` (no copy, the same ``unet``).
Each model still keeps its own entry in the pipeline cache; this registry only holds weak
references, so it never keeps evicted weights alive. Local directories count as one
source when one is a symlink to the other.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any


class SharedModules:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[str, list[weakref.ref[Any]]] = {}

    def load(self, source: str, pipeline_class: Any, from_pretrained: Callable[[], Any]) -> Any:
        """A ``pipeline_class`` pipeline for ``source``: built from the modules of one
        already in memory for that source, else ``from_pretrained()``."""
        # A weights directory symlinked to another is the same source.
        if Path(source).exists():
            source = str(Path(source).resolve())
        with self._lock:
            alive = [ref() for ref in self._live.get(source, [])]
            loaded = next((pipe for pipe in alive if pipe is not None), None)
        if loaded is None:
            pipe = from_pretrained()
        elif isinstance(loaded, pipeline_class):
            pipe = loaded
        else:
            pipe = pipeline_class.from_pipe(loaded)
        with self._lock:
            refs = [ref for ref in self._live.get(source, []) if ref() is not None]
            if all(ref() is not pipe for ref in refs):
                refs.append(weakref.ref(pipe))
            self._live[source] = refs
        return pipe

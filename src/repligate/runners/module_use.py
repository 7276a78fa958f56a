"""Calls on shared, loaded modules: most only read them, some change them for one call.

A call that adds layers to a shared module for itself (a LoRA, swapped embeddings) must not
run while another call uses that module, or the other call would see its changes. Runners
take ``shared()`` for a plain call and ``exclusive()`` for such a call (SDXL's
``replicate_weights``, Flux's ``hf_lora``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ModuleUse:
    """Plain calls run together; a call that changes the modules for itself waits for
    them and runs alone. Waiting exclusive calls hold off new shared ones, so they are not
    starved."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting_exclusive = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._waiting_exclusive:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting_exclusive += 1
            while self._exclusive or self._shared:
                self._cond.wait()
            self._waiting_exclusive -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()

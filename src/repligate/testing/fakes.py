"""Fakes of the server's backends, for our tests and for users' own: a queue that runs
jobs inline or on demand, a scripted provider, and a clock that tests set.

Wire them in with ``app.build_container(settings, queue=..., provider=..., clock=...)``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from repligate.events import Canceled, Event
from repligate.models.spec import ModelSpec
from repligate.queue.base import CancelFlags
from repligate.runners.base import RunContext


class ManualQueue:
    """A queue whose jobs run inline (in ``submit``) or when the test says so."""

    durable = False

    def __init__(
        self, execute: Callable[[str], None], flags: CancelFlags, *, inline: bool = False
    ) -> None:
        self._execute = execute
        self._flags = flags
        self.inline = inline
        self.pending: list[str] = []
        self._lock = threading.Lock()

    @classmethod
    def factory(cls, *, inline: bool = False) -> Callable[..., ManualQueue]:
        """For ``build_container(queue=...)``; the built queue is ``container.queue``."""
        return lambda execute, flags: cls(execute, flags, inline=inline)

    def submit(self, prediction_id: str, model: str = "") -> None:
        if self.inline:
            self._execute(prediction_id)
            return
        with self._lock:
            self.pending.append(prediction_id)

    def cancel(self, prediction_id: str) -> None:
        self._flags.set(prediction_id)

    def hand_back(self, prediction_id: str) -> None:
        """What a stopping worker is told: stop at the next step and requeue."""
        self._flags.hand_back(prediction_id)

    def run_next(self) -> str | None:
        with self._lock:
            if not self.pending:
                return None
            prediction_id = self.pending.pop(0)
        self._execute(prediction_id)
        return prediction_id

    def run_all(self) -> list[str]:
        ran = []
        while (prediction_id := self.run_next()) is not None:
            ran.append(prediction_id)
        return ran

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


@dataclass(frozen=True)
class Raise:
    """Fail the prediction with this message (the runner raises)."""

    message: str


@dataclass(frozen=True)
class WaitForCancel:
    """Block until the prediction is canceled (or ``timeout`` passes: then fail)."""

    timeout: float = 30.0


@dataclass
class Gate:
    """Block until the test calls ``open()``; ``reached`` is set when the run gets here."""

    reached: threading.Event = field(default_factory=threading.Event)
    _open: threading.Event = field(default_factory=threading.Event)

    def open(self) -> None:
        self._open.set()

    def wait(self, ctx: RunContext, timeout: float = 30.0) -> None:
        self.reached.set()
        if not self._open.wait(timeout):
            raise TimeoutError("the test never opened this gate")
        if ctx.canceled():
            raise Canceled()


Step = Event | Raise | WaitForCancel | Gate


@dataclass
class ScriptedProvider:
    """Runs every model by playing a script: events are emitted in order, ``Raise``
    fails, ``WaitForCancel`` and ``Gate`` block; then ``returns`` is the output.

    ``scripts`` may give a model (``owner/name``) its own script and output.
    ``runs`` records (model, input) of each run.
    """

    script: Sequence[Step] = ()
    returns: Any = None
    scripts: dict[str, tuple[Sequence[Step], Any]] = field(default_factory=dict)
    refuse: dict[str, str] = field(default_factory=dict)
    runs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def unavailable(self, spec: ModelSpec) -> str | None:
        return self.refuse.get(spec.ref)

    def loaded(self) -> list[str]:
        return sorted({model for model, _ in self.runs})

    def run(self, spec: ModelSpec, inputs: dict[str, Any], ctx: RunContext) -> Any:
        self.runs.append((spec.ref, inputs))
        script, returns = self.scripts.get(spec.ref, (self.script, self.returns))
        for step in script:
            if ctx.canceled():
                raise Canceled()
            if isinstance(step, Raise):
                raise RuntimeError(step.message)
            if isinstance(step, WaitForCancel):
                _wait_for_cancel(ctx, step.timeout)
            elif isinstance(step, Gate):
                step.wait(ctx)
            else:
                ctx.emit(step)
        if ctx.canceled():
            raise Canceled()
        return returns


def _wait_for_cancel(ctx: RunContext, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ctx.canceled():
            raise Canceled()
        time.sleep(0.01)
    raise TimeoutError("the script waited for a cancel that never came")


class FakeClock:
    """A clock that only moves when the test moves it."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when

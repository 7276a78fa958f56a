"""Runs one claimed prediction: fetches its file inputs, runs the provider, stores its
outputs, and records every change through the transition point (``transitions.py``).

A failed prediction is data (``failed`` with ``error``); only a fault of the server itself
escapes as an exception, which the queue logs and survives.

No file is left that no prediction points to: a file stored for an output that the
prediction could not take (it was canceled meanwhile) is deleted again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from repligate import inputs
from repligate.errors import PredictionFailure
from repligate.events import Canceled, Event, FrameProgress, Log, Output, OutputFile, Progress
from repligate.fetch import Fetcher
from repligate.leases import LeaseKeeper
from repligate.lifecycle import Status
from repligate.models.spec import ModelSpec
from repligate.providers.base import Provider
from repligate.queue.base import CancelFlags
from repligate.records import Prediction, RunProgress
from repligate.registry import Registry
from repligate.storage.base import Storage, keys_in, map_leaves
from repligate.transitions import Transitions

log = logging.getLogger(__name__)

HANDED_BACK_NOTE = "The server stopped while this prediction ran; it was queued again."


class _Context:
    """The RunContext of one prediction: buffers log lines and flushes them now and then
    (with the run's structured progress, which rides in the same write), stores live
    outputs as they come, and notices a cancel made here (flag) or anywhere
    else (the prediction stopped `processing`)."""

    def __init__(
        self,
        prediction_id: str,
        transitions: Transitions,
        storage: Storage,
        flags: CancelFlags,
        flush_interval: float,
        owner: str | None,
    ) -> None:
        self.prediction_id = prediction_id
        self.owner = owner
        self._transitions = transitions
        self._storage = storage
        self._flags = flags
        self._flush_interval = flush_interval
        self._pending: list[str] = []
        self._last_flush = time.monotonic()
        self._started = time.monotonic()
        self._stopped_elsewhere = False
        self.outputs: list[Any] = []
        # The last step and frame reported; written with the next flush when it changed.
        self.progress: RunProgress | None = None
        self._progress_written: RunProgress | None = None

    def emit(self, event: Event) -> None:
        if isinstance(event, Output):
            self._add_output(event.value)
            return
        if isinstance(event, Log):
            self._pending.append(event.line)
            # A runner logs (e.g. the seed) just before its denoising loop: tqdm's clock
            # starts there, so loading time does not count as step time.
            self._started = time.monotonic()
        elif isinstance(event, Progress):
            elapsed = time.monotonic() - self._started
            self._pending.append(tqdm.format_meter(event.step, event.total, elapsed))
            self.progress = dataclasses.replace(
                self.progress or RunProgress(0, 0), current=event.step, total=event.total
            )
        elif isinstance(event, FrameProgress):
            self.progress = dataclasses.replace(
                self.progress or RunProgress(0, 0), frame=event.frame, frames=event.total
            )
        if time.monotonic() - self._last_flush >= self._flush_interval:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        text = self.take_pending()
        progress = self.take_progress()
        if not text and progress is None:
            return
        if (
            self._transitions.append_logs(self.prediction_id, text, progress, owner=self.owner)
            is None
        ):
            self._stopped_elsewhere = True

    def take_progress(self) -> RunProgress | None:
        """The progress if it changed since it was last written, now taken as written."""
        if self.progress == self._progress_written:
            return None
        self._progress_written = self.progress
        return self.progress

    def take_pending(self) -> str:
        """The log lines not written yet, now taken (for the final write to carry)."""
        text = "".join(line + "\n" for line in self._pending)
        self._pending.clear()
        return text

    def _add_output(self, value: Any) -> None:
        # Logs first, so a reader sees what led to this output.
        self.flush()
        stored = store_files(self._storage, self.prediction_id, value)
        outputs = [*self.outputs, stored]
        if self._transitions.set_output(self.prediction_id, outputs, owner=self.owner) is None:
            delete_files(self._storage, stored)
            self._stopped_elsewhere = True
            return
        self.outputs.append(stored)

    def canceled(self) -> bool:
        return self._stopped_elsewhere or self._flags.is_set(self.prediction_id)


class Executor:
    def __init__(
        self,
        *,
        transitions: Transitions,
        registry: Registry,
        provider: Provider,
        storage: Storage,
        flags: CancelFlags,
        fetcher: Fetcher,
        leases: LeaseKeeper,
        log_flush_interval: float = 0.5,
    ) -> None:
        self._transitions = transitions
        self._registry = registry
        self._provider = provider
        self._storage = storage
        self._flags = flags
        self._fetcher = fetcher
        self._flush_interval = log_flush_interval
        # Held while each prediction runs (leases.py).
        self._leases = leases
        # Called with a prediction this worker handed back (it is `starting` again): a
        # queue whose messages outlive the run (Celery) queues it again here.
        self.on_hand_back: Callable[[Prediction], None] | None = None

    def execute(self, prediction_id: str) -> None:
        try:
            self._execute(prediction_id)
        finally:
            self._flags.clear(prediction_id)
            self._leases.release(prediction_id)

    def _claim(self, prediction_id: str) -> Prediction | None:
        # Only a `starting` prediction moves to `processing`: a canceled one stays
        # canceled, a second worker (or a redelivered task) loses the race, and one whose
        # run is under another worker's live lease is left to it.
        claimed = self._transitions.claim(
            prediction_id, self._leases.owner, self._leases.lease_seconds
        )
        if claimed is not None:
            self._leases.hold(prediction_id)
        return claimed

    def _execute(self, prediction_id: str) -> None:
        prediction = self._claim(prediction_id)
        if prediction is None:
            return
        owner = self._leases.owner
        ctx = _Context(
            prediction_id,
            self._transitions,
            self._storage,
            self._flags,
            self._flush_interval,
            owner,
        )
        try:
            if self._flags.is_set(prediction_id):
                raise Canceled()
            spec = self._registry.resolve(prediction.version)
            run_input = self._fetch_files(
                spec, inputs.validate(spec, prediction.input), prediction.api_key_id
            )
            returned = self._provider.run(spec, run_input, ctx)
            output = self._final_output(prediction_id, returned, ctx)
            _check_json(output)
        except Canceled:
            ctx.flush()
            if self._flags.is_handed_back(prediction_id):
                # It runs again from the start: the outputs it had are dropped with it.
                back = self._transitions.hand_back(prediction_id, HANDED_BACK_NOTE, owner=owner)
                if back is not None:
                    delete_files(self._storage, ctx.outputs)
                    if self.on_hand_back is not None:
                        self.on_hand_back(back)
            else:
                self._transitions.cancel(prediction_id, owner=owner)
        except Exception as exc:
            if isinstance(exc, PredictionFailure):
                # A known failure says all there is in its message: no traceback.
                log.warning("prediction %s failed: %s", prediction_id, exc)
            else:
                log.warning("prediction %s failed", prediction_id, exc_info=True)
            ctx.flush()
            self._transitions.fail(prediction_id, _message(exc), owner=owner)
        else:
            # One write ends it: the last log lines ride along, and the claim's own
            # answer stands in for a read before the compare-and-set.
            finished = self._transitions.finish(
                prediction_id,
                Status.SUCCEEDED,
                output=output,
                append_logs=ctx.take_pending() or None,
                claimed=prediction,
                progress=ctx.take_progress(),
                owner=owner,
            )
            if finished is None:
                # Canceled (or ended elsewhere) while the last files were written: the
                # prediction keeps what it had, and these files belong to nobody.
                for key in keys_in(output) - keys_in(ctx.outputs):
                    self._storage.delete(key)

    def _final_output(self, prediction_id: str, returned: Any, ctx: _Context) -> Any:
        if ctx.outputs:
            if returned is not None:
                raise RuntimeError("a runner that emits Output events must return None")
            return list(ctx.outputs)
        return store_files(self._storage, prediction_id, returned)

    def _fetch_files(
        self, spec: ModelSpec, run_input: dict[str, Any], owner: str
    ) -> dict[str, Any]:
        """Replace every file input (``format: uri``) by the fetched file; a refused fetch
        fails the prediction with a message naming the input."""
        properties = spec.schemas["Input"]["properties"]
        fetched = dict(run_input)
        for name, value in run_input.items():
            if properties.get(name, {}).get("format") == "uri" and isinstance(value, str) and value:
                fetched[name] = self._fetcher.fetch(value, field=name, owner=owner)
        return fetched


def store_files(storage: Storage, prediction_id: str, output: Any) -> Any:
    """Write every ``OutputFile`` in an output (any JSON shape) to storage; the same shape
    comes back with ``storage:<key>`` references in their place."""

    def put(value: Any) -> Any:
        if isinstance(value, OutputFile):
            key = f"predictions/{prediction_id}/{value.name}"
            return storage.put(key, value.data, value.content_type)
        return value

    return map_leaves(output, put)


def delete_files(storage: Storage, output: Any) -> None:
    """Remove the files an output refers to."""
    for key in keys_in(output):
        storage.delete(key)


def _check_json(output: Any) -> None:
    """An output the API could not send (NaN, bytes, objects) fails the prediction now,
    saying so, instead of breaking the write or every later read."""
    try:
        json.dumps(output, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"The model's output is not valid JSON: {exc}") from exc


def _message(exc: Exception) -> str:
    text = str(exc).strip()
    return text if text else type(exc).__name__

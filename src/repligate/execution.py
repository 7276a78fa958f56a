"""Runs one claimed prediction: the provider, the outputs into storage, and every status
change through the lifecycle's compare-and-set.

A failed prediction is data (``failed`` with ``error``); only a fault of the server itself
escapes as an exception, which the queue logs and survives.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from repligate import inputs
from repligate.events import Canceled, Event, Log, OutputFile, Progress
from repligate.fetch import Fetcher
from repligate.lifecycle import Status
from repligate.models.spec import ModelSpec
from repligate.providers.base import Provider
from repligate.queue.base import CancelFlags
from repligate.registry import Registry
from repligate.storage.base import Storage
from repligate.store import predictions as store

log = logging.getLogger(__name__)


class _Context:
    """The RunContext of one prediction: buffers log lines, flushes them now and then, and
    notices a cancel made here (flag) or anywhere else (the row stopped `processing`)."""

    def __init__(
        self,
        prediction_id: str,
        sessions: sessionmaker[Session],
        flags: CancelFlags,
        flush_interval: float,
    ) -> None:
        self.prediction_id = prediction_id
        self._sessions = sessions
        self._flags = flags
        self._flush_interval = flush_interval
        self._lines: list[str] = []
        self._unflushed = 0
        self._last_flush = time.monotonic()
        self._started = time.monotonic()
        self._stopped_elsewhere = False

    def emit(self, event: Event) -> None:
        if isinstance(event, Log):
            self._lines.append(event.line)
            # A runner logs (e.g. the seed) just before its denoising loop: tqdm's clock
            # starts there, so loading time does not count as step time.
            self._started = time.monotonic()
        elif isinstance(event, Progress):
            elapsed = time.monotonic() - self._started
            self._lines.append(tqdm.format_meter(event.step, event.total, elapsed))
        if time.monotonic() - self._last_flush >= self._flush_interval:
            self.flush()

    def flush(self) -> None:
        pending = self._lines[self._unflushed :]
        self._last_flush = time.monotonic()
        if not pending:
            return
        with self._sessions() as session:
            still_running = store.append_logs(
                session, self.prediction_id, "".join(line + "\n" for line in pending)
            )
        self._unflushed = len(self._lines)
        if not still_running:
            self._stopped_elsewhere = True

    def canceled(self) -> bool:
        return self._stopped_elsewhere or self._flags.is_set(self.prediction_id)

    @property
    def logs(self) -> str:
        return "".join(line + "\n" for line in self._lines)


class Executor:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        registry: Registry,
        provider: Provider,
        storage: Storage,
        flags: CancelFlags,
        fetcher: Fetcher,
        on_finished: Callable[[str], None],
        log_flush_interval: float = 0.5,
    ) -> None:
        self._sessions = sessions
        self._registry = registry
        self._provider = provider
        self._storage = storage
        self._flags = flags
        self._fetcher = fetcher
        self._on_finished = on_finished
        self._flush_interval = log_flush_interval

    def execute(self, prediction_id: str) -> None:
        try:
            self._execute(prediction_id)
        finally:
            self._flags.clear(prediction_id)
            self._on_finished(prediction_id)

    def _execute(self, prediction_id: str) -> None:
        started_at = datetime.now(UTC)
        with self._sessions() as session:
            # Claim it: only a `starting` prediction moves to `processing` (a canceled one
            # stays canceled, and a second worker loses the race).
            if not store.move(session, prediction_id, Status.PROCESSING, started_at=started_at):
                return
            prediction = store.get(session, prediction_id)
        assert prediction is not None
        ctx = _Context(prediction_id, self._sessions, self._flags, self._flush_interval)
        try:
            if self._flags.is_set(prediction_id):
                raise Canceled()
            spec = self._registry.resolve(prediction.version)
            run_input = self._fetch_files(
                spec, inputs.validate(spec, prediction.input), prediction.api_key_id
            )
            output = self._provider.run(spec, run_input, ctx)
            stored = self._store_files(prediction_id, output)
        except Canceled:
            self._finish(prediction, started_at, Status.CANCELED, ctx.logs)
        except Exception as exc:
            log.warning("prediction %s failed", prediction_id, exc_info=True)
            self._finish(prediction, started_at, Status.FAILED, ctx.logs, error=_message(exc))
        else:
            self._finish(prediction, started_at, Status.SUCCEEDED, ctx.logs, output=stored)

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

    def _store_files(self, prediction_id: str, output: Any) -> Any:
        if isinstance(output, OutputFile):
            key = f"predictions/{prediction_id}/{output.name}"
            return self._storage.put(key, output.data, output.content_type)
        if isinstance(output, list):
            return [self._store_files(prediction_id, item) for item in output]
        if isinstance(output, dict):
            return {k: self._store_files(prediction_id, v) for k, v in output.items()}
        return output

    def _finish(
        self,
        prediction: Any,
        started_at: datetime,
        status: Status,
        logs: str,
        *,
        output: Any = None,
        error: str | None = None,
    ) -> None:
        completed_at = datetime.now(UTC)
        with self._sessions() as session:
            store.move(
                session,
                prediction.id,
                status,
                output=output,
                error=error,
                logs=logs,
                completed_at=completed_at,
                predict_time=(completed_at - started_at).total_seconds(),
                total_time=(completed_at - prediction.created_at).total_seconds(),
            )


def _message(exc: Exception) -> str:
    text = str(exc).strip()
    return text if text else type(exc).__name__

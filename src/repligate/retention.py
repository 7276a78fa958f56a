"""Retention: what is removed, and when.

- Predictions that finished longer ago than ``prediction_retention_seconds`` lose their
  input, output, output files and logs, as Replicate's do after an hour: they show
  ``data_removed: true`` and ``output: null``. Their id, model, status, error, times and
  metrics stay, and so does their usage row (measured first).
- Uploaded files lose their bytes once they expire (``expires_at``) or are deleted; their
  rows go ``file_record_retention_seconds`` later (until then a URL naming one is still
  known as this server's own and refused as expired, not fetched).

``Sweeper.run_once`` does it all once (``repligate sweep``); the server runs it every
``sweep_interval_seconds`` (``run_forever``). Every step is safe to run from several
processes at once: each removal is a compare-and-set, and a missing file is no error.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from repligate.clock import Clock
from repligate.storage.base import Storage, keys_in
from repligate.store import files as file_store
from repligate.store import predictions as prediction_store
from repligate.transitions import Transitions
from repligate.uploads import UploadService
from repligate.usage import UsageRecorder

log = logging.getLogger(__name__)

_BATCH = 100


@dataclass(frozen=True)
class SweepResult:
    usage_recorded: int = 0
    predictions_cleared: int = 0
    files_removed: int = 0
    file_rows_deleted: int = 0


class Sweeper:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        transitions: Transitions,
        storage: Storage,
        uploads: UploadService,
        usage: UsageRecorder,
        clock: Clock,
        prediction_retention_seconds: int | None,
        file_record_retention_seconds: int,
    ) -> None:
        self._sessions = sessions
        self._transitions = transitions
        self._storage = storage
        self._uploads = uploads
        self._usage = usage
        self._clock = clock
        self.prediction_retention_seconds = prediction_retention_seconds
        self.file_record_retention_seconds = file_record_retention_seconds

    def run_once(self) -> SweepResult:
        # Usage first: a prediction is measured before its files can go.
        usage = 0
        while (recorded := self._usage.catch_up()) > 0:
            usage += recorded
        return SweepResult(
            usage_recorded=usage,
            predictions_cleared=self._clear_predictions(),
            files_removed=self._remove_files(),
            file_rows_deleted=self._delete_file_rows(),
        )

    def _clear_predictions(self) -> int:
        if self.prediction_retention_seconds is None:
            return 0
        cutoff = self._clock.now() - timedelta(seconds=self.prediction_retention_seconds)
        cleared = 0
        while True:
            with self._sessions() as session:
                due = prediction_store.finished_before(session, cutoff, limit=_BATCH)
            for prediction_id in due:
                before = self._transitions.remove_data(prediction_id)
                if before is None:
                    continue
                for key in keys_in(before.output):
                    self._storage.delete(key)
                cleared += 1
            if len(due) < _BATCH:
                return cleared

    def _remove_files(self) -> int:
        removed = 0
        while (count := self._uploads.sweep(_BATCH)) > 0:
            removed += count
        return removed

    def _delete_file_rows(self) -> int:
        cutoff = self._clock.now() - timedelta(seconds=self.file_record_retention_seconds)
        deleted = 0
        while True:
            with self._sessions() as session:
                count = file_store.delete_gone_before(session, cutoff, limit=_BATCH)
            deleted += count
            if count < _BATCH:
                return deleted

    async def run_forever(self, interval: float) -> None:
        """Sweep every ``interval`` seconds until canceled; a failed sweep is logged and
        the next one tries again."""
        while True:
            # Sleep first: the server has just started, and a test's clock has not moved.
            await asyncio.sleep(interval)
            try:
                result = await asyncio.to_thread(self.run_once)
                if result != SweepResult():
                    log.info("sweep: %s", result)
            except Exception:
                log.exception("the sweep failed; trying again in %.0f s", interval)

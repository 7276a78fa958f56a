"""Counts for the metrics endpoint (``metrics.py``), read from the database so that every
process reports the same numbers: the queue's depth and what runs, by provider."""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table, func, select

from repligate.lifecycle import Status
from repligate.store.db import Db
from repligate.store.rows import PredictionRow, RelayedPredictionRow

_PREDICTIONS = cast(Table, PredictionRow.__table__)
_RELAYED = cast(Table, RelayedPredictionRow.__table__)

_QUEUED = (
    select(func.count())
    .select_from(_PREDICTIONS)
    .where(_PREDICTIONS.c.status == Status.STARTING.value)
)
# Relayed predictions have a relayed_predictions row; the others run here.
_RUNNING = (
    select(_RELAYED.c.prediction_id.is_not(None).label("relayed"), func.count())
    .select_from(_PREDICTIONS.outerjoin(_RELAYED, _RELAYED.c.prediction_id == _PREDICTIONS.c.id))
    .where(_PREDICTIONS.c.status == Status.PROCESSING.value)
    .group_by("relayed")
)


def queue_depth(session: Db) -> int:
    """Predictions created and not yet claimed (``starting``)."""
    return session.scalar(_QUEUED) or 0


def running_by_provider(session: Db) -> dict[str, int]:
    """``processing`` predictions: ``local`` (this server's workers) and ``replicate``
    (relayed upstream), both always present."""
    counts = {"local": 0, "replicate": 0}
    for relayed, count in session.execute(_RUNNING):
        counts["replicate" if relayed else "local"] += count
    return counts

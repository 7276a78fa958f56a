"""Domain records: what the service hands to the API layer (no ORM, no HTTP)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from repligate.lifecycle import Status


@dataclass(frozen=True)
class Prediction:
    id: str
    api_key_id: str
    model: str
    version: str
    input: dict[str, Any]
    run_input: dict[str, Any]
    output: Any
    logs: str
    error: str | None
    status: Status
    source: str
    webhook: str | None
    webhook_events_filter: list[str] | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    predict_time: float | None
    total_time: float | None


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    token_prefix: str
    created_at: datetime
    revoked_at: datetime | None

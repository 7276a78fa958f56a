"""Opaque page cursors for newest-first listings (predictions, uploaded files): a row's
position (created_at, id), and for two-way paging the direction, base64url-encoded."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from repligate.errors import InvalidRequest

Position = tuple[datetime, str]


def encode(created_at: datetime, row_id: str, direction: str | None = None) -> str:
    parts = [created_at.isoformat(), row_id]
    if direction is not None:
        parts.insert(0, direction)
    return base64.urlsafe_b64encode("|".join(parts).encode()).decode().rstrip("=")


def decode(
    cursor: str, *, directions: tuple[str, ...] = (), hint: str
) -> tuple[str | None, Position]:
    """The direction (None when ``directions`` is empty: one-way paging) and the position.
    Anything else is a 400 saying ``hint``."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        parts = base64.urlsafe_b64decode(padded).decode().split("|")
        direction = parts.pop(0) if directions else None
        if direction is not None and direction not in directions:
            raise ValueError(direction)
        at, row_id = parts
        position = datetime.fromisoformat(at)
        # Our cursors always carry UTC; a naive one is forged and would fail in the store.
        if position.tzinfo is None:
            raise ValueError(at)
        return direction, (position, row_id)
    except (ValueError, IndexError, UnicodeDecodeError, binascii.Error) as exc:
        raise InvalidRequest(f"The cursor is not valid; {hint}.") from exc

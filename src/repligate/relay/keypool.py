"""The upstream key pool: each key's health, its concurrency and its request rates.

A key answering 401 or 403 is taken out (logged once, for the operator); a periodic check
brings it back when it is valid again. A 429 makes a key cool down for ``Retry-After``
and the next request goes to another key. Keys are named by their position and a
fingerprint (a short hash): a token never appears in a message or a log.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

ACTIVE = "active"
OUT = "out"


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


class RateBucket:
    """At most ``per_minute`` requests a minute, spaced evenly (short bursts allowed)."""

    def __init__(self, per_minute: float, burst: int = 10) -> None:
        self._interval = 60.0 / per_minute
        self._burst = burst * self._interval
        self._next = 0.0

    def delay(self) -> float:
        """Reserve the next slot; how long to sleep before using it."""
        now = time.monotonic()
        self._next = max(self._next, now - self._burst) + self._interval
        return max(0.0, self._next - self._interval - now)


@dataclass
class UpstreamKey:
    position: int
    token: str
    fingerprint: str
    concurrency: int
    creates: RateBucket
    requests: RateBucket
    state: str = ACTIVE
    reason: str | None = None
    cool_until: float = 0.0
    _slots: asyncio.Semaphore | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return f"upstream key {self.position} ({self.fingerprint})"

    @property
    def usable(self) -> bool:
        return self.state == ACTIVE

    def slots(self) -> asyncio.Semaphore:
        # Made on first use, inside the relay's loop.
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        return self._slots

    def cooling(self, now: float) -> float:
        return max(0.0, self.cool_until - now)


StateSink = Callable[[UpstreamKey], None]


class KeyPool:
    def __init__(
        self,
        tokens: list[str],
        *,
        concurrency: int,
        creates_per_minute: float,
        requests_per_minute: float,
        on_change: StateSink | None = None,
    ) -> None:
        self.keys = [
            UpstreamKey(
                position=index + 1,
                token=token,
                fingerprint=fingerprint(token),
                concurrency=concurrency,
                creates=RateBucket(creates_per_minute),
                requests=RateBucket(requests_per_minute),
            )
            for index, token in enumerate(tokens)
        ]
        self._by_fingerprint = {key.fingerprint: key for key in self.keys}
        self._next = 0
        self._on_change = on_change

    def __bool__(self) -> bool:
        return bool(self.keys)

    def by_fingerprint(self, value: str | None) -> UpstreamKey | None:
        return self._by_fingerprint.get(value or "")

    def pick(self, exclude: set[str] | None = None) -> tuple[UpstreamKey | None, float]:
        """The next usable key (round robin), least cooled down first, and how long it
        still cools down; (None, 0) when no key is usable."""
        now = time.monotonic()
        usable = [k for k in self.keys if k.usable and k.fingerprint not in (exclude or set())]
        if not usable:
            return None, 0.0
        start = self._next % len(usable)
        self._next += 1
        ordered = usable[start:] + usable[:start]
        best = min(ordered, key=lambda k: k.cooling(now))
        return best, best.cooling(now)

    def take_out(self, key: UpstreamKey, reason: str) -> None:
        if key.state == OUT:
            return
        key.state, key.reason = OUT, reason
        log.error(
            "%s taken out of the pool: %s. It comes back by itself once a check finds it "
            "valid again (see `repligate upstream status`).",
            key.label,
            reason,
        )
        self._changed(key)

    def bring_back(self, key: UpstreamKey) -> None:
        if key.state == ACTIVE:
            return
        key.state, key.reason = ACTIVE, None
        log.warning("%s is valid again and back in the pool", key.label)
        self._changed(key)

    def cool_down(self, key: UpstreamKey, seconds: float) -> None:
        key.cool_until = max(key.cool_until, time.monotonic() + seconds)
        log.warning("%s rate limited upstream; resting it %.1f s", key.label, seconds)

    def _changed(self, key: UpstreamKey) -> None:
        if self._on_change is not None:
            try:
                self._on_change(key)
            except Exception:
                log.exception("recording the state of %s failed", key.label)

    def redact(self, text: str) -> str:
        """``text`` with any token of the pool replaced by its key's label."""
        for key in self.keys:
            if key.token in text:
                text = text.replace(key.token, f"<{key.label}>")
        return text

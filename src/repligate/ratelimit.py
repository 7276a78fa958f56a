"""Rate limits, prediction quotas and concurrency caps, per API key. No HTTP here.

Rates use the ``limits`` library (a moving window: a burst is refused once the last
minute holds the limit, and the answer says when the oldest request leaves it). Its
storage is this process's memory (``memory://``) or Redis (``redis://``), where every API
process shares the counts. Each key has two rates: ``create`` (creating predictions) and
``read`` (every other authenticated request), Replicate's 600 and 3,000 a minute unless
the settings or the key's own limits (``repligate keys limits``) say otherwise.

A key may also have a prediction quota (predictions that ran or may still run, ever or
in a rolling window: refused with 402 once used up) and a cap on predictions queued or
running at once (429). Both are counted in the database when a prediction is created;
creates that arrive at the same instant may each see the last free place.

Errors (all RepligateError): Throttled (429, with the seconds to wait), QuotaExhausted
(402), TooManyRunning (429).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from datetime import timedelta
from functools import lru_cache
from typing import Literal

from limits import RateLimitItem, parse_many
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from sqlalchemy.orm import Session, sessionmaker

from repligate.clock import Clock
from repligate.errors import RepligateError
from repligate.records import KeyLimits
from repligate.store import db
from repligate.store import keys as key_store
from repligate.store import limits as store

Kind = Literal["create", "read"]
NO_LIMIT = "none"
# The quota's windows, by the word after "/" (a month is 30 days, a year 365).
QUOTA_WINDOWS = {
    "hour": 3600,
    "day": 86400,
    "week": 7 * 86400,
    "month": 30 * 86400,
    "year": 365 * 86400,
}
# How many keys' limits a process remembers (least recently used first out).
_CACHE_SIZE = 10_000


class Throttled(RepligateError):
    title = "Too many requests"

    def __init__(self, retry_after: int) -> None:
        # Replicate's words, so clients that show them read as they do there.
        super().__init__(f"Request was throttled. Your rate limit resets in ~{retry_after}s.")
        self.retry_after = retry_after


class QuotaExhausted(RepligateError):
    title = "Quota exhausted"


class TooManyRunning(RepligateError):
    title = "Too many predictions running"


@lru_cache(maxsize=256)
def parse_rate(text: str) -> tuple[RateLimitItem, ...]:
    """``"600/minute"`` (several joined by ``;``) as limits; ``"none"``: no limit.
    ValueError with a readable message for anything else."""
    if text.strip().lower() == NO_LIMIT:
        return ()
    try:
        return tuple(parse_many(text))
    except ValueError as exc:
        raise ValueError(
            f"{text!r} is not a rate limit; write it like 600/minute, 10/second;600/minute "
            f"or {NO_LIMIT}"
        ) from exc


def parse_quota(text: str) -> tuple[int, int | None]:
    """``"1000"`` (ever) or ``"1000/month"`` (rolling): the count and the window."""
    count_text, _, window = text.strip().partition("/")
    if not count_text.isdigit() or (window and window not in QUOTA_WINDOWS):
        raise ValueError(
            f"{text!r} is not a quota; write a count, alone or per "
            + "|".join(QUOTA_WINDOWS)
            + " (e.g. 1000/month)"
        )
    return int(count_text), QUOTA_WINDOWS[window] if window else None


def quota_text(limits: KeyLimits) -> str | None:
    if limits.prediction_quota is None:
        return None
    if limits.quota_window_seconds is None:
        return str(limits.prediction_quota)
    words = {seconds: word for word, seconds in QUOTA_WINDOWS.items()}
    window = limits.quota_window_seconds
    return f"{limits.prediction_quota}/{words.get(window, f'{window}s')}"


def _storage_url(url: str) -> tuple[str, dict[str, str]]:
    """The limits library's async storage for a plain URL; Redis through redis-py."""
    if url.startswith("async+"):
        return url, {}
    options = {"implementation": "redispy"} if url.startswith(("redis", "rediss")) else {}
    return "async+" + url, options


class KeyLimiter:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        clock: Clock,
        create_default: str = "600/minute",
        read_default: str = "3000/minute",
        storage_url: str = "memory://",
        cache_seconds: float = 5.0,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        # Parsed now, so a wrong default stops the server at start with its message.
        self._defaults: dict[Kind, str] = {"create": create_default, "read": read_default}
        for text in self._defaults.values():
            parse_rate(text)
        url, options = _storage_url(storage_url)
        self._strategy = MovingWindowRateLimiter(storage_from_string(url, **options))
        self._cache_seconds = cache_seconds
        self._cache: OrderedDict[str, tuple[float, KeyLimits]] = OrderedDict()
        self._lock = threading.Lock()

    # -- the key's limits ---------------------------------------------------------------

    def cached(self, token: str) -> KeyLimits | None:
        """The limits remembered for this token, if still fresh."""
        token_hash = key_store.hash_token(token)
        with self._lock:
            found = self._cache.get(token_hash)
            if found is None or found[0] < time.monotonic():
                return None
            self._cache.move_to_end(token_hash)
            return found[1]

    def load(self, token: str) -> KeyLimits | None:
        """The limits of the token's active key, from the database; None for no such key
        (the route answers 401 then)."""
        token_hash = key_store.hash_token(token)
        with db.connect(self._sessions) as session:
            limits = store.for_token(session, token_hash)
        if limits is not None and self._cache_seconds > 0:
            with self._lock:
                self._cache[token_hash] = (time.monotonic() + self._cache_seconds, limits)
                self._cache.move_to_end(token_hash)
                while len(self._cache) > _CACHE_SIZE:
                    self._cache.popitem(last=False)
        return limits

    # -- rates ----------------------------------------------------------------------------

    def rates(self, kind: Kind, limits: KeyLimits) -> tuple[RateLimitItem, ...]:
        own = limits.create_rate_limit if kind == "create" else limits.read_rate_limit
        return parse_rate(own or self._defaults[kind])

    async def hit(self, kind: Kind, limits: KeyLimits) -> None:
        """Count one request of ``kind``; Throttled if a rate of the key is used up."""
        for item in self.rates(kind, limits):
            if not await self._strategy.hit(item, kind, limits.api_key_id):
                stats = await self._strategy.get_window_stats(item, kind, limits.api_key_id)
                raise Throttled(max(1, math.ceil(stats.reset_time - time.time())))

    # -- quota and concurrency ----------------------------------------------------------

    def admit(self, limits: KeyLimits) -> None:
        """Whether the key may create one more prediction now (blocking: a thread)."""
        if limits.prediction_quota is None and limits.max_concurrent is None:
            return
        with db.connect(self._sessions) as session:
            if limits.prediction_quota is not None:
                since = None
                if limits.quota_window_seconds is not None:
                    since = self._clock.now() - timedelta(seconds=limits.quota_window_seconds)
                used = store.count_for_quota(session, limits.api_key_id, since)
                if used >= limits.prediction_quota:
                    raise QuotaExhausted(_quota_message(limits))
            if limits.max_concurrent is not None:
                running = store.count_unfinished(session, limits.api_key_id)
                if running >= limits.max_concurrent:
                    raise TooManyRunning(
                        f"This API key already has {running} predictions queued or running, "
                        f"and may have at most {limits.max_concurrent} at once. Wait for one "
                        "to finish (or cancel one), then try again."
                    )


def _quota_message(limits: KeyLimits) -> str:
    window = ""
    if limits.quota_window_seconds is not None:
        words = {seconds: word for word, seconds in QUOTA_WINDOWS.items()}
        word = words.get(limits.quota_window_seconds)
        window = (
            f" per {word} (counted over the last {word})"
            if word
            else f" per {limits.quota_window_seconds} seconds"
        )
    return (
        f"This API key has used its quota of {limits.prediction_quota} predictions{window}. "
        "Ask the server's operator to raise it."
    )

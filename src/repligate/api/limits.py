"""The rate-limit dependencies, beside ``deps.current_key``: ``limit_reads`` on every
authenticated route but create, ``limit_creates`` on the create routes (rate, then the
key's quota and concurrency cap). A request without a known token passes through: its
route answers 401."""

from __future__ import annotations

from fastapi import Request

from repligate.api.deps import CurrentKey, bearer_token, container, in_thread
from repligate.ratelimit import Kind
from repligate.records import KeyLimits


async def _limits(request: Request) -> KeyLimits | None:
    wired = container(request)
    limiter, token = wired.limiter, bearer_token(request)
    if limiter is None or not token:
        return None
    # A miss is one short read: inline where the store allows it, as the key check is.
    return limiter.cached(token) or await wired.service.read(limiter.load, token)


async def _hit(request: Request, kind: Kind) -> KeyLimits | None:
    limits = await _limits(request)
    limiter = container(request).limiter
    if limits is not None and limiter is not None:
        await limiter.hit(kind, limits)
    return limits


async def limit_reads(request: Request) -> None:
    await _hit(request, "read")


async def limit_creates(request: Request, key: CurrentKey) -> None:
    # ``key`` first: a bad token is a 401 before anything is counted.
    limits = await _hit(request, "create")
    limiter = container(request).limiter
    # Only a quota or a cap needs the database (a thread); without them a burst of
    # creates would queue a thread hop each for nothing.
    capped = limits is not None and (
        limits.prediction_quota is not None or limits.max_concurrent is not None
    )
    if capped and limits is not None and limiter is not None:
        await in_thread(limiter.admit, limits)

"""The tests' checks that a service of this machine answers, skipping (naming it and
why) when it does not: the scale-out tests need PostgreSQL, Redis and RabbitMQ."""

from __future__ import annotations

import socket
from urllib.parse import urlparse

import pytest


def require_service(url: str, what: str) -> None:
    """Skip unless something listens where ``url`` points."""
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 0), 2):
            pass
    except OSError as exc:
        pytest.skip(f"{what} not reachable at {parsed.hostname}:{parsed.port}: {exc}")


def redis_or_skip(url: str, what: str = "Redis") -> str:
    """``url`` when a Redis there answers a PING; else skip, saying what needed it."""
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as error:  # no package, no server: either way nothing to test on
        pytest.skip(f"{what}: no Redis answers at {url} ({type(error).__name__}: {error})")
    return url

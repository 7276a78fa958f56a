"""Readiness: whether this process can serve, checked against what it depends on.

``/health`` says the process answers; ``/ready`` (api/ready.py) says its dependencies do:
the database (one ``SELECT 1``), storage (a small probe object written, read back and
deleted) and, when the deployment has them, the broker and the cross-process event bus.
A load balancer takes a process out of rotation while any check fails.

A component that talks to another service (a Celery queue, a Redis bus) opts in by
having a ``ready_check()`` method that raises when the service does not answer.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, text

from repligate.storage.base import Storage

Check = Callable[[], None]

# A check that has not answered by then counts as failed: a hung dependency must not
# hang the probe too.
CHECK_TIMEOUT_SECONDS = 5.0
_PROBE = b"repligate readiness probe"


def database_check(engine: Engine) -> Check:
    def check() -> None:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    return check


def storage_check(storage: Storage) -> Check:
    def check() -> None:
        key = f"readiness/{secrets.token_hex(8)}"
        storage.put(key, _PROBE, "application/octet-stream")
        try:
            with storage.open(key) as handle:
                if handle.read() != _PROBE:
                    raise RuntimeError("storage returned different bytes than were written")
        finally:
            storage.delete(key)

    return check


def optional_check(component: object) -> Check | None:
    """The component's own ``ready_check``, when it has one (see the module doc)."""
    check = getattr(component, "ready_check", None)
    return check if callable(check) else None


@dataclass(frozen=True)
class Report:
    checks: dict[str, str]  # name -> "ok" or the error, in a few words

    @property
    def ready(self) -> bool:
        return all(value == "ok" for value in self.checks.values())


async def run_checks(checks: dict[str, Check]) -> Report:
    """Every check at once, each in a thread and under ``CHECK_TIMEOUT_SECONDS``."""

    async def one(check: Check) -> str:
        try:
            await asyncio.wait_for(asyncio.to_thread(check), CHECK_TIMEOUT_SECONDS)
        except TimeoutError:
            return f"no answer within {CHECK_TIMEOUT_SECONDS:g} s"
        except Exception as exc:  # any failure means not ready; say which
            first_line = (str(exc).strip().splitlines() or [""])[0][:200]
            return f"{type(exc).__name__}: {first_line}".rstrip(": ")
        return "ok"

    names = list(checks)
    results = await asyncio.gather(*(one(checks[name]) for name in names))
    return Report(dict(zip(names, results, strict=True)))

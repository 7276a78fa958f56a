"""The HTTP client for upstream Replicate (aiohttp: one session, pooled connections).

aiohttp, not httpx: measured in bench/relay.py and research/relay-anchor.md, httpx's pool
costs about 17 ms of CPU per request with 1,000 connections open, aiohttp about 0.2 ms.

Errors (what the tracker does with them):
- ``UpstreamRejected``: upstream refused the request itself (4xx other than 401/403/429):
  the prediction fails with upstream's own detail.
- ``UpstreamFailed``: 5xx or network errors past the retries, or no usable key for a
  create: the prediction fails, saying that upstream failed.
- ``NoUsableKey``: the key a prediction belongs to is out of the pool (401/403) and no
  other key can read it: the tracker waits for the periodic check to bring a key back.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from repligate.relay.keypool import KeyPool, UpstreamKey

log = logging.getLogger(__name__)

_USER_AGENT = "repligate-relay"


class UpstreamError(Exception):
    pass


class UpstreamRejected(UpstreamError):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"Replicate (upstream) refused the prediction ({status}): {detail}")
        self.status = status


class UpstreamFailed(UpstreamError):
    pass


class NoUsableKey(UpstreamError):
    pass


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int) -> float:
        """Full jitter: a random delay up to base * 2^attempt, capped."""
        return random.uniform(0, min(self.cap, self.base * 2**attempt))


def retry_after(value: str | None, default: float = 1.0) -> float:
    """Seconds from a Retry-After header: a number, or an HTTP date."""
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    return max(0.0, when.timestamp() - time.time())


def _detail(body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return body[:300].decode("utf-8", "replace").strip() or "no detail"
    if isinstance(parsed, dict):
        return str(parsed.get("detail") or parsed.get("title") or parsed)[:1000]
    return str(parsed)[:1000]


class UpstreamClient:
    def __init__(
        self,
        base_url: str,
        pool: KeyPool,
        *,
        retry: RetryPolicy,
        timeout: float = 30.0,
        connections: int = 1000,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.pool = pool
        self.retry = retry
        self._timeout = timeout
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0  # sent, for the bench
        # Told (method, status) of each answer, 0 when none came (the metrics count them).
        self.on_answer: Callable[[str, int], None] | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._connections, limit_per_host=0)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None),
            headers={"User-Agent": _USER_AGENT},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    # -- the calls --------------------------------------------------------------------

    async def create(
        self,
        version: str,
        inputs: dict[str, Any],
        *,
        idempotency_key: str,
        wait: int | None,
        webhook: str | None = None,
    ) -> tuple[UpstreamKey, dict[str, Any]]:
        """Create upstream with any usable key; on 401/403 or 429, the next key."""
        headers = {"Idempotency-Key": idempotency_key}
        read_timeout = self._timeout
        if wait:
            headers["Prefer"] = f"wait={wait}"
            read_timeout += wait
        body: dict[str, Any] = {"version": version, "input": inputs}
        if webhook is not None:
            body["webhook"] = webhook
            body["webhook_events_filter"] = ["start", "output", "logs", "completed"]
        tried: set[str] = set()
        failures = 0
        while True:
            key, cooling = self.pool.pick(exclude=tried)
            if key is None:
                if tried and any(k.usable for k in self.pool.keys):
                    tried.clear()  # every usable key was rate limited once: go round again
                    continue
                raise UpstreamFailed(
                    "Replicate (upstream) failed: no upstream key is valid "
                    "(the operator sees `repligate upstream status`)."
                )
            if cooling:
                await asyncio.sleep(cooling)
            status, reply, headers_in = await self._send(
                key, "POST", "/predictions", body, headers, read_timeout, create=True
            )
            if status in (200, 201, 202):
                return key, reply
            if status in (401, 403):
                self.pool.take_out(key, f"upstream answered {status} to a create")
                tried.add(key.fingerprint)
            elif status == 429:
                self.pool.cool_down(key, retry_after(headers_in.get("Retry-After")))
                tried.add(key.fingerprint)
            elif status >= 500 or status == 0:
                failures = await self._back_off(failures, reply)
            else:
                raise UpstreamRejected(status, self.pool.redact(_detail(reply["_raw"])))

    async def get(self, key: UpstreamKey, upstream_id: str) -> dict[str, Any]:
        return await self._on_prediction(key, "GET", f"/predictions/{upstream_id}")

    async def cancel(self, key: UpstreamKey, upstream_id: str) -> dict[str, Any]:
        return await self._on_prediction(key, "POST", f"/predictions/{upstream_id}/cancel")

    async def check(self, key: UpstreamKey) -> bool | None:
        """Whether a key is valid (a cheap authenticated read); None if unknown now."""
        status, _, _ = await self._send(key, "GET", "/predictions", None, {}, self._timeout)
        if status in (401, 403):
            return False
        return True if 200 <= status < 300 else None

    async def _on_prediction(self, key: UpstreamKey, method: str, path: str) -> dict[str, Any]:
        """A read or cancel of an existing upstream prediction: it belongs to the account
        of the key that made it, so that key first; others if it is out of the pool."""
        failures = 0
        current = key
        tried: set[str] = set()
        while True:
            if not current.usable:
                tried.add(current.fingerprint)
                other, _ = self.pool.pick(exclude=tried)
                if other is None:
                    raise NoUsableKey(f"{key.label} is out of the pool")
                current = other
            cooling = current.cooling(time.monotonic())
            if cooling:
                await asyncio.sleep(cooling)
            status, reply, headers_in = await self._send(
                current, method, path, None, {}, self._timeout
            )
            if 200 <= status < 300:
                return reply
            if status in (401, 403):
                if current is key:
                    self.pool.take_out(current, f"upstream answered {status}")
                tried.add(current.fingerprint)
                current = key  # loop: picks another key
            elif status == 429:
                self.pool.cool_down(current, retry_after(headers_in.get("Retry-After")))
            elif status >= 500 or status == 0:
                failures = await self._back_off(failures, reply)
            elif status == 404 and current is not key:
                # Another account's key does not see this prediction: try the next.
                tried.add(current.fingerprint)
                current = key
            else:
                raise UpstreamRejected(status, self.pool.redact(_detail(reply["_raw"])))

    async def _back_off(self, failures: int, reply: dict[str, Any]) -> int:
        reason = reply.get("_failure") or f"it answered {reply.get('_status')}"
        if failures >= self.retry.max_retries:
            raise UpstreamFailed(
                f"Replicate (upstream) failed: {self.pool.redact(str(reason))}, "
                f"{failures + 1} times in a row."
            )
        await asyncio.sleep(self.retry.delay(failures))
        return failures + 1

    async def _send(
        self,
        key: UpstreamKey,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        headers: dict[str, str],
        read_timeout: float,
        *,
        create: bool = False,
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """One request: (status, parsed JSON or details, headers). Status 0: no answer."""
        assert self._session is not None, "start() the client first"
        bucket = key.creates if create else key.requests
        pause = bucket.delay()
        if pause:
            await asyncio.sleep(pause)
        all_headers = {"Authorization": f"Bearer {key.token}", **headers}
        if body is not None:
            all_headers["Content-Type"] = "application/json"
        data = json.dumps(body).encode() if body is not None else None
        timeout = aiohttp.ClientTimeout(total=read_timeout + 10, sock_read=read_timeout)
        self.requests += 1
        async with key.slots():
            try:
                async with self._session.request(
                    method, self.base_url + path, data=data, headers=all_headers, timeout=timeout
                ) as response:
                    raw = await response.read()
                    status = response.status
                    answer_headers = dict(response.headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                failure = f"no answer from {self.base_url} ({type(exc).__name__})"
                if self.on_answer is not None:
                    self.on_answer(method, 0)
                return 0, {"_failure": failure}, {}
        if self.on_answer is not None:
            self.on_answer(method, status)
        if 200 <= status < 300:
            try:
                parsed = json.loads(raw)
            except ValueError:
                return 502, {"_failure": "upstream sent a reply that is not JSON"}, {}
            if not isinstance(parsed, dict):
                return 502, {"_failure": "upstream sent a reply that is not an object"}, {}
            return status, parsed, answer_headers
        return status, {"_raw": raw, "_status": status}, answer_headers

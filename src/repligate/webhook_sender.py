"""Sending one webhook request: a POST of the signed body, through the same SSRF guard
as file fetches (``netguard``).

Every hop is checked: the URL's scheme and host, then every address its name resolves
to, and the connection goes only to those checked addresses. A redirect is followed (up
to ``max_redirects``), POSTing the same body and signature to the new URL, and that URL
is checked again; Replicate follows none, and a receiver that moved then silently gets
nothing. Private, loopback, link-local (cloud metadata) and other non-public addresses
are refused unless ``REPLIGATE_WEBHOOK_ALLOW_PRIVATE=true``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpcore
import httpx

from repligate import netguard
from repligate.netguard import AddressPolicy, TimeUp

if TYPE_CHECKING:
    import ssl

    from repligate.settings import Settings

ALLOW_PRIVATE_HINT = "set REPLIGATE_WEBHOOK_ALLOW_PRIVATE=true to allow it"
_USER_AGENT = "repligate (webhooks)"
# What is read of a receiver's answer: only its status matters.
_MAX_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True)
class SendResult:
    """The answer's status code, or ``error``; ``refused``: the URL may not be reached
    (retrying cannot help). ``url``: where the request last went (after redirects)."""

    url: str
    status_code: int | None
    error: str | None
    refused: bool
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class _Refused(Exception):
    pass


class WebhookSender:
    def __init__(
        self,
        *,
        allow_private: bool = False,
        allowed_networks: Iterable[str] = (),
        timeout: float = 10.0,
        max_redirects: int = 3,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.policy = AddressPolicy(allow_private=allow_private, allowed_networks=allowed_networks)
        self.timeout = timeout
        self.max_redirects = max_redirects
        self._ssl_context = ssl_context

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookSender:
        return cls(
            allow_private=settings.webhook_allow_private,
            allowed_networks=settings.webhook_allowed_networks,
            timeout=settings.webhook_timeout_seconds,
            max_redirects=settings.webhook_max_redirects,
        )

    def refusal(self, url: str) -> str | None:
        """Why ``url`` cannot be a webhook, judged without any network (at create time):
        its shape, its scheme, a literal address or metadata host name refused. None if
        it may be used (its name is resolved and checked at each delivery)."""
        try:
            self._parse(url)
        except _Refused as exc:
            return str(exc)
        return None

    def _parse(self, url: str) -> httpx.URL:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError, TypeError):
            raise _Refused(f"{url[:200]!r} is not a valid URL") from None
        if parsed.scheme not in ("http", "https"):
            raise _Refused(f"the webhook must be an http(s) URL (got {parsed.scheme or 'none'}:)")
        if not parsed.host:
            raise _Refused("the webhook URL has no host")
        refusal = self.policy.host_refusal(parsed.host)
        if refusal is not None:
            raise _Refused(refusal.replace(netguard.ALLOW_PRIVATE_HINT, ALLOW_PRIVATE_HINT))
        return parsed

    def send(self, url: str, body: bytes, headers: dict[str, str]) -> SendResult:
        """POST ``body`` to ``url``; never raises for what the receiver or the network do."""
        started = time.monotonic()
        deadline = started + self.timeout
        current = url
        try:
            target = self._parse(url)
            for _ in range(self.max_redirects + 1):
                current = str(target)
                status, location = self._post(target, body, headers, deadline)
                if location is None:
                    return SendResult(current, status, None, False, time.monotonic() - started)
                try:
                    target = self._parse(str(target.join(location)))
                except _Refused as exc:
                    raise _Refused(f"redirected to {location}: {exc}") from None
            error = f"more than {self.max_redirects} redirects"
            return SendResult(current, None, error, False, time.monotonic() - started)
        except _Refused as exc:
            return SendResult(current, None, f"refused: {exc}", True, time.monotonic() - started)
        except (TimeUp, httpx.TimeoutException, httpcore.TimeoutException):
            error = f"no answer within {self.timeout:g} seconds"
        except (httpx.HTTPError, httpcore.NetworkError, httpcore.ProtocolError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return SendResult(current, None, error, False, time.monotonic() - started)

    def _post(
        self, url: httpx.URL, body: bytes, headers: dict[str, str], deadline: float
    ) -> tuple[int, str | None]:
        """One hop: the status code, and the redirect's Location if it is one."""
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = netguard.resolve(url.raw_host.decode("ascii"), port, self.policy, deadline)
        except ValueError as exc:
            raise _Refused(
                str(exc).replace(netguard.ALLOW_PRIVATE_HINT, ALLOW_PRIVATE_HINT)
            ) from None
        if self._ssl_context is None:
            self._ssl_context = httpx.create_ssl_context()
        transport = netguard.PinnedTransport(addresses, deadline, self._ssl_context)
        request_headers = {
            **headers,
            "Content-Type": "application/json",
            "User-Agent": _USER_AGENT,
        }
        # trust_env=False: a proxy from the environment would bypass the pinning.
        with (
            httpx.Client(transport=transport, trust_env=False, timeout=None) as client,
            client.stream("POST", url, content=body, headers=request_headers) as response,
        ):
            read = 0
            for chunk in response.iter_raw():
                read += len(chunk)
                if read > _MAX_ANSWER_BYTES or time.monotonic() > deadline:
                    break
            if response.is_redirect and "location" in response.headers:
                return response.status_code, response.headers["location"]
            return response.status_code, None

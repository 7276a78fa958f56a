"""The SSRF guard of file fetching: which addresses a fetch may reach, name resolution done
once per hop, and an httpx transport whose connections go only to addresses already checked
and never outlive the fetch's deadline.

Why a transport and not "check, then let httpx connect": httpx would resolve the name again,
and a DNS answer that changes between the two lookups (rebinding) would reach an address
nobody checked. Here the socket is opened to the checked address itself, while the request
keeps the URL's host, so the Host header, SNI and certificate checks all use the real name.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOW_PRIVATE_HINT = "set REPLIGATE_FETCH_ALLOW_PRIVATE=true to allow it"

# Explicit tables rather than ipaddress.is_private, whose meaning changed between Python
# patch releases; a final `is_global` check below catches anything not listed.
_BLOCKED: list[tuple[IPNetwork, str]] = [
    (ipaddress.ip_network(net), kind)
    for net, kind in [
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("100.64.0.0/10", "carrier-grade NAT (100.64.0.0/10)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local (where cloud metadata services live)"),
        ("192.0.0.0/24", "reserved"),
        ("192.0.2.0/24", "reserved"),
        ("198.18.0.0/15", "reserved"),
        ("198.51.100.0/24", "reserved"),
        ("203.0.113.0/24", "reserved"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fc00::/7", "private"),
        ("fec0::/10", "private"),
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
        ("64:ff9b:1::/48", "private"),
    ]
]
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

# Names that reach a cloud provider's metadata service without a link-local address showing.
METADATA_HOSTS = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)

# getaddrinfo cannot be given a timeout; it runs here so a hung resolver costs a thread,
# not the fetch's deadline. Threads start on first use, not at import.
_RESOLVER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="repligate-dns")


class TimeUp(Exception):
    """The fetch's overall deadline passed."""


def _embedded_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def classify(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public unicast address (e.g. "private", "loopback"), or None."""
    inner = _embedded_v4(ip)
    if inner is not None:
        return classify(inner)
    for network, kind in _BLOCKED:
        if ip.version == network.version and ip in network:
            return kind
    if ip.is_reserved or ip.is_multicast or not ip.is_global:
        return "reserved"
    return None


class AddressPolicy:
    """Which addresses fetches may reach: public unicast ones, plus whatever the operator
    allows (everything with ``allow_private``, or only ``allowed_networks``)."""

    def __init__(
        self, *, allow_private: bool = False, allowed_networks: Iterable[str | IPNetwork] = ()
    ) -> None:
        self.allow_private = allow_private
        self.allowed_networks = [ipaddress.ip_network(n) for n in allowed_networks]

    def _allowed(self, ip: IPAddress) -> bool:
        candidates = [ip] + [v4 for v4 in [_embedded_v4(ip)] if v4 is not None]
        return self.allow_private or any(
            c.version == net.version and c in net
            for c in candidates
            for net in self.allowed_networks
        )

    def address_problem(self, ip: IPAddress) -> str | None:
        """What is wrong with ``ip`` ("private", ...), or None when it may be reached."""
        return None if self._allowed(ip) else classify(ip)

    def host_refusal(self, host: str) -> str | None:
        """A refusal for a URL's host before any lookup: a literal address not allowed, or a
        cloud metadata name."""
        literal = parse_ip(host)
        if literal is not None:
            kind = self.address_problem(literal)
            return None if kind is None else f"the address {show(literal)} is {kind}; {_hint(kind)}"
        name = host.lower().rstrip(".")
        if name in METADATA_HOSTS and not self.allow_private:
            return f"{name} is a cloud metadata service; {ALLOW_PRIVATE_HINT}"
        return None


def _hint(kind: str) -> str:
    if kind in ("unspecified", "multicast"):
        return "no fetch can use such an address"
    return ALLOW_PRIVATE_HINT


def show(ip: IPAddress) -> str:
    """An address as people write it (Python prints ::ffff:10.0.0.1 as ::ffff:a00:1)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return f"::ffff:{ip.ipv4_mapped}"
    return str(ip)


def parse_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def resolve(host: str, port: int, policy: AddressPolicy, deadline: float) -> list[IPAddress]:
    """Every address ``host`` resolves to, once; refused (ValueError with the reason) when any
    of them may not be reached, since the connection could otherwise land on it."""
    literal = parse_ip(host)
    if literal is not None:
        addresses = [literal]
    else:
        future = _RESOLVER.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
        try:
            infos = future.result(timeout=max(deadline - time.monotonic(), 0.0))
        except FutureTimeout as exc:
            raise TimeUp() from exc
        except OSError as exc:
            raise ValueError(f"the host {host} could not be resolved") from exc
        addresses = []
        for info in infos:
            ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            if ip not in addresses:
                addresses.append(ip)
        if not addresses:
            raise ValueError(f"the host {host} has no address")
    for ip in addresses:
        kind = policy.address_problem(ip)
        if kind is not None:
            where = (
                f"{host} resolves to {show(ip)}, which"
                if literal is None
                else f"the address {show(ip)}"
            )
            raise ValueError(f"{where} is {kind}; {_hint(kind)}")
    return addresses


def _clamp(deadline: float, timeout: float | None) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeUp()
    return remaining if timeout is None else min(timeout, remaining)


class _DeadlineStream(httpcore.NetworkStream):
    """A socket whose every read and write waits at most until the fetch's deadline, so a
    server that trickles bytes is cut off on time, not after one timeout per read."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _clamp(self._deadline, timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _clamp(self._deadline, timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, _clamp(self._deadline, timeout))
        return _DeadlineStream(inner, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _PinnedBackend(httpcore.NetworkBackend):
    def __init__(self, addresses: Sequence[IPAddress], deadline: float) -> None:
        self._addresses = list(addresses)
        self._deadline = deadline
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        # `host` (the URL's name) is deliberately ignored: only checked addresses are dialed.
        failure: Exception = httpcore.ConnectError("no address to connect to")
        for ip in self._addresses:
            try:
                stream = self._inner.connect_tcp(
                    str(ip),
                    port,
                    _clamp(self._deadline, timeout),
                    local_address,
                    socket_options,
                )
            except httpcore.ConnectError as exc:
                failure = exc
                continue
            return _DeadlineStream(stream, self._deadline)
        raise failure

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("file fetches never use unix sockets")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, inner: Iterable[bytes]) -> None:
        self._inner = inner

    def __iter__(self) -> Iterator[bytes]:
        yield from self._inner

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


class PinnedTransport(httpx.BaseTransport):
    """An httpx transport for one hop of one fetch: connections go to ``addresses`` only,
    whatever the URL names, and no socket operation waits past ``deadline`` (monotonic).

    httpcore exceptions are not mapped to httpx ones: the fetcher turns both into refusals.
    """

    def __init__(
        self, addresses: Sequence[IPAddress], deadline: float, ssl_context: ssl.SSLContext
    ) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=1,
            retries=0,
            http1=True,
            http2=False,
            network_backend=_PinnedBackend(addresses, deadline),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        core_response = self._pool.handle_request(core_request)
        assert isinstance(core_response.stream, Iterable)
        return httpx.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=_ResponseStream(core_response.stream),
            extensions=core_response.extensions,
        )

    def close(self) -> None:
        self._pool.close()

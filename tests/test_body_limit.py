"""A body over the limit reaches real clients, over a real socket, as the 413 problem.

A client like urllib sends its whole body before it reads the reply; refused unread, a
body larger than the socket buffers ended in "connection reset" instead of the 413.
These run against uvicorn (LiveServer), with the default 20 MB limit and a 64 MB body.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests

from repligate.app import create_app
from repligate.settings import Settings
from repligate.testing.live_server import LiveServer

LIMIT = 20 * 1024 * 1024
# Larger than the loopback socket buffers, so a client blocks sending it.
BIG_BODY = b'{"version": "' + b"x" * (64 * 1024 * 1024) + b'", "input": {}}'
DETAIL = f"The request body is larger than {LIMIT} bytes."


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("limit-data"), public_base_url=None)
    assert settings.max_request_bytes == LIMIT
    with LiveServer(create_app(settings)) as server:
        yield server


@pytest.fixture(scope="module")
def headers(live: LiveServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {live.make_token()}", "Content-Type": "application/json"}


def _assert_413(status: int, content_type: str, raw: bytes) -> None:
    assert status == 413
    assert content_type.startswith("application/problem+json")
    assert json.loads(raw) == {"title": "Request body too large", "detail": DETAIL, "status": 413}


def test_urllib_reads_the_413(live: LiveServer, headers: dict[str, str]) -> None:
    request = urllib.request.Request(f"{live.url}/v1/predictions", BIG_BODY, headers)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=120)
    error = caught.value
    _assert_413(error.code, error.headers["content-type"], error.read())


def test_requests_reads_the_413(live: LiveServer, headers: dict[str, str]) -> None:
    response = requests.post(
        f"{live.url}/v1/predictions", data=BIG_BODY, headers=headers, timeout=120
    )
    _assert_413(response.status_code, response.headers["content-type"], response.content)
    assert response.headers["connection"] == "close"


def test_httpx_reads_the_413_with_and_without_a_length(
    live: LiveServer, headers: dict[str, str]
) -> None:
    def chunked() -> Iterator[bytes]:
        for start in range(0, len(BIG_BODY), 1 << 20):
            yield BIG_BODY[start : start + (1 << 20)]

    with httpx.Client(base_url=live.url, headers=headers, timeout=120) as client:
        for content in (BIG_BODY, chunked()):
            response = client.post("/v1/predictions", content=content)
            _assert_413(response.status_code, response.headers["content-type"], response.content)
        # The server carries on: the next request (a new connection) is answered.
        assert client.get("/v1/predictions").status_code == 200


def test_a_client_waiting_for_100_continue_gets_the_413_at_once(
    live: LiveServer, headers: dict[str, str]
) -> None:
    """It has sent no body yet: no "100 Continue" is sent, only the 413."""
    head = [
        "POST /v1/predictions HTTP/1.1",
        f"Host: {live.host}:{live.port}",
        f"Content-Length: {len(BIG_BODY)}",
        "Expect: 100-continue",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    with socket.create_connection((live.host, live.port), timeout=60) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        reply = _read_until_closed(sock)
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large"
    header_block, _, body = rest.partition(b"\r\n\r\n")
    fields = _header_fields(header_block)
    assert fields["connection"] == "close"
    _assert_413(413, fields["content-type"], body)


def _read_until_closed(sock: socket.socket) -> bytes:
    parts = []
    while chunk := sock.recv(65536):
        parts.append(chunk)
    return b"".join(parts)


def _header_fields(block: bytes) -> dict[str, Any]:
    lines = block.decode("latin-1").split("\r\n")
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}

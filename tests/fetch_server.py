"""Helpers shared by the fetcher tests (test_fetch, test_netguard): a real HTTP(S) server on
127.0.0.1 with one path per behaviour under test, the images it serves, a fake resolver, and
a one-line way to read a refusal.

The server is on loopback, so fetches that should succeed use a fetcher that allows
127.0.0.0/8 (only), and refusals use the default policy or that same narrow one, which is
how a redirect to 10.0.0.1 or 169.254.169.254 is shown to be refused before connecting.
"""

from __future__ import annotations

import functools
import gzip
import io
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from repligate.fetch import Fetcher, FetchRefused

LOOPBACK = ["127.0.0.0/8"]
HINT = "set REPLIGATE_FETCH_ALLOW_PRIVATE=true to allow it"


def png(size: tuple[int, int] = (48, 32)) -> bytes:
    image = Image.new("RGB", size, (10, 200, 30))
    image.putpixel((0, 0), (255, 0, 255))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@functools.cache
def _bomb() -> bytes:
    # 400 million 1-bit pixels, all zero: a few tens of kilobytes of PNG.
    out = io.BytesIO()
    Image.new("1", (20000, 20000)).save(out, "PNG")
    return out.getvalue()


def _exif_rotated_jpeg() -> bytes:
    """40x20, red left half, blue right half, tagged "rotate 90° clockwise to display"."""
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif, quality=95)
    return out.getvalue()


PNG = png()
EXIF_JPEG = _exif_rotated_jpeg()
ZEROS_GZIP = gzip.compress(b"\0" * (8 * 1024 * 1024))


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        try:
            if path == "/png":
                # A generic label: the bytes say what it is.
                self._send(PNG, "application/octet-stream")
            elif path == "/text":
                self._send(b"just some words", "text/plain; charset=utf-8")
            elif path == "/exif.jpg":
                self._send(EXIF_JPEG, "image/jpeg")
            elif path == "/bomb.png":
                self._send(_bomb(), "image/png")
            elif path == "/host":
                self._send(self.headers["Host"].encode(), "text/plain")
            elif path == "/gzipped-png":
                # Compressed although the fetcher asked for identity.
                self._send(gzip.compress(PNG), "image/png", Content_Encoding="gzip")
            elif path == "/gzip-bomb":
                self._send(ZEROS_GZIP, "application/octet-stream", Content_Encoding="gzip")
            elif path == "/huge":
                # No Content-Length: only counting the bytes can stop it.
                self.send_response(200)
                self.end_headers()
                for _ in range(64):
                    self.wfile.write(b"x" * 65536)
            elif path == "/huge-declared":
                self.send_response(200)
                self.send_header("Content-Length", str(10**12))
                self.end_headers()
                self.wfile.write(b"x" * 10)
            elif path == "/slow":
                # Each byte comes well within any per-read timeout; only a deadline on the
                # whole download stops this.
                self.send_response(200)
                self.send_header("Content-Length", "600")
                self.end_headers()
                for _ in range(600):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.05)
            elif path == "/stall":
                # Headers, then silence: only a timeout on the socket itself ends this.
                self.send_response(200)
                self.send_header("Content-Length", "10")
                self.end_headers()
                self.wfile.flush()
                time.sleep(3)
            elif path.startswith("/redirect/"):
                hops = int(path.rsplit("/", 1)[1])
                self._redirect(f"/redirect/{hops - 1}" if hops > 0 else "/png")
            elif path == "/redirect-to":
                self._redirect(query["url"][0])
            else:
                self.send_error(404)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the fetcher hung up, as it should have


@contextmanager
def local_server(tls: ssl.SSLContext | None = None) -> Iterator[int]:
    """The test server on 127.0.0.1 at a free port (behind TLS with ``tls``); yields the
    port. Each test module starts its own from a module-scoped fixture."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def refusal(fetcher: Fetcher, value: str, field: str = "image") -> str:
    with pytest.raises(FetchRefused) as caught:
        fetcher.fetch(value, field=field)
    return str(caught.value)


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[list[str]]]) -> list[str]:
    """Names in ``answers`` resolve to the next listed answer (the last one repeats); other
    names (the literal addresses a socket connects to) go to the real resolver."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in answers:
            return real(host, port, *args, **kwargs)
        asked.append(host)
        queue = answers[host]
        addresses = queue.pop(0) if len(queue) > 1 else queue[0]
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0))
            if ":" in ip
            else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
            for ip in addresses
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked

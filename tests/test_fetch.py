"""File inputs: the fetcher against a real HTTP(S) server on 127.0.0.1, and the API's
create-time check.

The server is on loopback, so fetches that should succeed use a fetcher that allows
127.0.0.0/8 (only), and refusals use the default policy or that same narrow one, which is
how a redirect to 10.0.0.1 or 169.254.169.254 is shown to be refused before connecting.
"""

from __future__ import annotations

import base64
import functools
import gzip
import io
import shutil
import socket
import ssl
import subprocess
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from repligate.app import create_app
from repligate.fetch import Fetcher, FetchRefused, check_reference
from repligate.netguard import AddressPolicy
from repligate.settings import Settings
from tests.conftest import make_token

LOOPBACK = ["127.0.0.0/8"]
HINT = "set REPLIGATE_FETCH_ALLOW_PRIVATE=true to allow it"
IMG2IMG_VERSION = "15a3689ee13b0d2616e98820eca31d4c3abcd36672df6afce5cb6feb1d66087d"


def _png(size: tuple[int, int] = (48, 32)) -> bytes:
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


PNG = _png()
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


def _serve(server: ThreadingHTTPServer) -> Iterator[ThreadingHTTPServer]:
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    for running in _serve(server):
        yield f"http://127.0.0.1:{running.server_address[1]}"


@pytest.fixture
def fetcher() -> Fetcher:
    return Fetcher(allowed_networks=LOOPBACK)


def _refusal(fetcher: Fetcher, value: str, field: str = "image") -> str:
    with pytest.raises(FetchRefused) as caught:
        fetcher.fetch(value, field=field)
    return str(caught.value)


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[list[str]]]) -> list[str]:
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


# --- downloading --------------------------------------------------------------------------


def test_fetches_a_png_and_sniffs_its_type(base: str, fetcher: Fetcher) -> None:
    fetched = fetcher.fetch(f"{base}/png", field="image")
    assert fetched.data == PNG
    assert fetched.content_type == "image/png"  # served as application/octet-stream
    image = fetched.image()
    assert image.size == (48, 32)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 0, 255)
    assert image.getpixel((47, 31)) == (10, 200, 30)


def test_unknown_bytes_keep_the_servers_type(base: str, fetcher: Fetcher) -> None:
    fetched = fetcher.fetch(f"{base}/text", field="mask")
    assert fetched.content_type == "text/plain"
    with pytest.raises(FetchRefused, match=r"^mask: the file is not an image .*text/plain"):
        fetched.image()


def test_a_server_error_is_a_refusal_naming_the_status(base: str, fetcher: Fetcher) -> None:
    assert (
        _refusal(fetcher, f"{base}/missing") == f"image: the server answered 404 for {base}/missing"
    )


def test_a_closed_port_is_a_refusal(fetcher: Fetcher) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert _refusal(fetcher, f"http://127.0.0.1:{port}/x").startswith(
        "image: could not connect to 127.0.0.1"
    )


def test_a_body_past_the_cap_is_cut_off(base: str) -> None:
    small = Fetcher(allowed_networks=LOOPBACK, max_bytes=1024 * 1024)
    assert _refusal(small, f"{base}/huge") == "image: the file is larger than 1048576 bytes"


def test_a_declared_length_past_the_cap_is_refused_up_front(base: str, fetcher: Fetcher) -> None:
    assert _refusal(fetcher, f"{base}/huge-declared") == (
        f"image: the server says the file is {10**12} bytes, more than {fetcher.max_bytes}"
    )


def test_a_trickling_server_is_cut_off_by_the_overall_deadline(base: str) -> None:
    hasty = Fetcher(allowed_networks=LOOPBACK, timeout=0.5)
    assert _refusal(hasty, f"{base}/slow") == "image: downloading took longer than 0.5 seconds"


def test_a_silent_server_is_cut_off_by_the_overall_deadline(base: str) -> None:
    hasty = Fetcher(allowed_networks=LOOPBACK, timeout=0.3)
    assert _refusal(hasty, f"{base}/stall") == "image: downloading took longer than 0.3 seconds"


def test_compression_the_server_adds_anyway_is_undone(base: str, fetcher: Fetcher) -> None:
    assert fetcher.fetch(f"{base}/gzipped-png", field="image").data == PNG


def test_a_compression_bomb_is_cut_off_at_the_cap(base: str) -> None:
    small = Fetcher(allowed_networks=LOOPBACK, max_bytes=1024 * 1024)
    assert len(ZEROS_GZIP) < 1024 * 1024
    assert _refusal(small, f"{base}/gzip-bomb") == "image: the file is larger than 1048576 bytes"


def test_download_to_streams_to_disk_and_leaves_nothing_on_refusal(
    base: str, fetcher: Fetcher, tmp_path: Path
) -> None:
    target = tmp_path / "weights.bin"
    fetcher.download_to(f"{base}/png", target, field="weights")
    assert target.read_bytes() == PNG
    refused = tmp_path / "big.bin"
    with pytest.raises(FetchRefused, match=r"^weights: the file is larger than 1000 bytes$"):
        fetcher.download_to(f"{base}/huge", refused, field="weights", max_bytes=1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.bin"]
    with pytest.raises(FetchRefused, match=r"^weights: downloading took longer than 0.3 seconds$"):
        fetcher.download_to(f"{base}/slow", refused, field="weights", timeout=0.3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.bin"]


# --- redirects ----------------------------------------------------------------------------


def test_a_redirect_chain_is_followed(base: str, fetcher: Fetcher) -> None:
    assert fetcher.fetch(f"{base}/redirect/3", field="image").data == PNG


def test_too_many_redirects_are_refused(base: str) -> None:
    strict = Fetcher(allowed_networks=LOOPBACK, max_redirects=2)
    assert _refusal(strict, f"{base}/redirect/3") == "image: more than 2 redirects"


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://10.0.0.1/secret", f"the address 10.0.0.1 is private; {HINT}"),
        (
            "http://169.254.169.254/latest/meta-data/",
            f"the address 169.254.169.254 is link-local (where cloud metadata services live); "
            f"{HINT}",
        ),
        (
            "http://metadata.google.internal/computeMetadata/v1/",
            f"metadata.google.internal is a cloud metadata service; {HINT}",
        ),
        ("ftp://example.com/file.png", "must be an http(s) URL or a data: URI (got ftp:)"),
    ],
)
def test_every_redirect_hop_is_checked_again(
    base: str, fetcher: Fetcher, target: str, reason: str
) -> None:
    # The first hop (loopback) is allowed; the second is refused before any connection.
    assert _refusal(fetcher, f"{base}/redirect-to?url={target}") == (
        f"image: redirected to {target}: {reason}"
    )


# --- addresses ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "shown", "kind"),
    [
        ("127.0.0.1", "127.0.0.1", "loopback"),
        ("10.1.2.3", "10.1.2.3", "private"),
        ("172.16.5.4", "172.16.5.4", "private"),
        ("192.168.1.1", "192.168.1.1", "private"),
        ("100.64.0.1", "100.64.0.1", "carrier-grade NAT (100.64.0.0/10)"),
        ("169.254.169.254", "169.254.169.254", "link-local (where cloud metadata services live)"),
        ("240.0.0.1", "240.0.0.1", "reserved"),
        ("[::1]", "::1", "loopback"),
        ("[fd00::1]", "fd00::1", "private"),
        ("[fe80::1]", "fe80::1", "link-local"),
        ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1", "loopback"),
        ("[::ffff:10.0.0.5]", "::ffff:10.0.0.5", "private"),
        ("[64:ff9b::a00:1]", "64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("[2002:7f00:1::]", "2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
    ],
)
def test_non_public_addresses_are_refused(host: str, shown: str, kind: str) -> None:
    reason = f"the address {shown} is {kind}; {HINT}"
    assert _refusal(Fetcher(), f"http://{host}:8080/image.png") == f"image: {reason}"
    # The same judgment without any network, for a caller that knows the settings.
    assert check_reference(f"http://{host}/x.png", policy=AddressPolicy()) == reason


@pytest.mark.parametrize(
    ("host", "shown", "kind"),
    [("0.0.0.0", "0.0.0.0", "unspecified"), ("224.0.0.1", "224.0.0.1", "multicast")],
)
def test_addresses_no_fetch_can_use_are_refused(host: str, shown: str, kind: str) -> None:
    assert _refusal(Fetcher(), f"http://{host}/x") == (
        f"image: the address {shown} is {kind}; no fetch can use such an address"
    )


def test_public_and_allowed_addresses_pass_the_policy() -> None:
    strict = AddressPolicy()
    assert check_reference("http://93.184.216.34/x.png", policy=strict) is None
    assert check_reference("https://[2606:4700:4700::1111]/x", policy=strict) is None
    assert check_reference("http://[::ffff:8.8.8.8]/x", policy=strict) is None
    assert check_reference("http://10.0.0.5/x", policy=AddressPolicy(allow_private=True)) is None
    narrow = AddressPolicy(allowed_networks=["10.1.0.0/16"])
    assert check_reference("http://10.1.2.3/x", policy=narrow) is None
    assert check_reference("http://10.2.0.1/x", policy=narrow) is not None


def test_allow_private_reaches_loopback(base: str) -> None:
    assert Fetcher(allow_private=True).fetch(f"{base}/png", field="image").data == PNG


def test_a_name_resolving_to_a_private_address_is_refused(
    base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_dns(monkeypatch, {"images.example.test": [["10.0.0.7"]]})
    assert _refusal(Fetcher(), "http://images.example.test/cat.png") == (
        f"image: images.example.test resolves to 10.0.0.7, which is private; {HINT}"
    )


def test_any_bad_address_among_the_answers_refuses_the_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_dns(monkeypatch, {"cdn.example.test": [["93.184.216.34", "127.0.0.1"]]})
    assert _refusal(Fetcher(), "http://cdn.example.test/cat.png") == (
        f"image: cdn.example.test resolves to 127.0.0.1, which is loopback; {HINT}"
    )


def test_the_connection_is_pinned_to_the_checked_address(
    base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rebinding name: the first answer is the allowed one, later answers are not. The
    # fetch must resolve once and connect to what it checked, keeping the name as Host.
    port = base.rsplit(":", 1)[1]
    asked = _fake_dns(monkeypatch, {"rebind.example.test": [["127.0.0.1"], ["10.9.9.9"]]})
    fetched = Fetcher(allowed_networks=LOOPBACK, timeout=5).fetch(
        f"http://rebind.example.test:{port}/host", field="image"
    )
    assert fetched.data == f"rebind.example.test:{port}".encode()
    assert asked == ["rebind.example.test"]


def test_redirect_targets_are_resolved_and_checked_too(
    base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_dns(monkeypatch, {"internal.example.test": [["192.168.0.10"]]})
    target = "http://internal.example.test/admin"
    assert _refusal(Fetcher(allowed_networks=LOOPBACK), f"{base}/redirect-to?url={target}") == (
        f"image: redirected to {target}: internal.example.test resolves to 192.168.0.10, "
        f"which is private; {HINT}"
    )


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, ssl.SSLContext]]:
    """An HTTPS server whose certificate names images.example.test only; and a client
    context that trusts it."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-nodes", "-days", "2"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-keyout", str(key), "-out", str(cert)),
            *("-subj", "/CN=images.example.test"),
            *("-addext", "subjectAltName=DNS:images.example.test"),
        ],
        check=True,
        capture_output=True,
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    client_context = ssl.create_default_context(cafile=str(cert))
    for running in _serve(server):
        yield running.server_address[1], client_context


def test_https_is_pinned_and_still_verifies_the_name(
    tls: tuple[int, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, context = tls
    _fake_dns(monkeypatch, {"images.example.test": [["127.0.0.1"]]})
    fetcher = Fetcher(allowed_networks=LOOPBACK, ssl_context=context)
    # Connected to 127.0.0.1, yet SNI and the certificate check used the URL's name.
    assert fetcher.fetch(f"https://images.example.test:{port}/png", field="image").data == PNG
    # The same server by address: its certificate does not name 127.0.0.1.
    refusal = _refusal(fetcher, f"https://127.0.0.1:{port}/png")
    assert refusal.startswith("image: could not connect to 127.0.0.1")
    assert "certificate" in refusal.lower()


# --- images -------------------------------------------------------------------------------


def test_an_image_bomb_is_refused(base: str, fetcher: Fetcher) -> None:
    fetched = fetcher.fetch(f"{base}/bomb.png", field="image")
    assert len(fetched.data) < 1024 * 1024
    with pytest.raises(FetchRefused, match=r"^image: the image declares more pixels .*bomb"):
        fetched.image()


def test_the_pixel_limit_is_per_fetcher(base: str) -> None:
    tight = Fetcher(allowed_networks=LOOPBACK, max_pixels=1000)
    with pytest.raises(FetchRefused) as caught:
        tight.fetch(f"{base}/png", field="image").image()
    assert str(caught.value) == "image: the image is 48x32, more than the limit of 1000 pixels"


def test_exif_orientation_is_applied_on_request(base: str, fetcher: Fetcher) -> None:
    fetched = fetcher.fetch(f"{base}/exif.jpg", field="image")
    assert fetched.content_type == "image/jpeg"
    upright = fetched.image()
    assert upright.size == (20, 40)
    # Rotated 90° clockwise: the red left half is now on top.
    top, bottom = upright.getpixel((10, 5)), upright.getpixel((10, 35))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60
    assert fetched.image(exif_transpose=False).size == (40, 20)
    assert fetched.image(mode=None).mode == "RGB"


# --- data URIs ----------------------------------------------------------------------------


def test_data_uris_decode_leniently_in_form(fetcher: Fetcher) -> None:
    encoded = base64.b64encode(PNG).decode()
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    for value in (
        f"data:image/png;base64,{encoded}",
        f"data:application/octet-stream;base64,{wrapped}",
        f"data:;base64,{base64.urlsafe_b64encode(PNG).decode().rstrip('=')}",
    ):
        fetched = fetcher.fetch(value, field="image")
        assert fetched.data == PNG
        assert fetched.content_type == "image/png"
    plain = fetcher.fetch("data:,hello%20world", field="prompt_file")
    assert (plain.data, plain.content_type) == (b"hello world", "text/plain")


def _saved(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(out, fmt)
    return out.getvalue()


def _zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("a.txt", "a")
    return out.getvalue()


def _tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        info = tarfile.TarInfo("a.txt")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"a"))
    return out.getvalue()


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (_saved("GIF"), "image/gif"),
        (_saved("WEBP"), "image/webp"),
        (_saved("BMP"), "image/bmp"),
        (_saved("TIFF"), "image/tiff"),
        (b"\0\0\0\x18ftypisom\0\0\x02\0isomiso2", "video/mp4"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm", "video/webm"),
        (_zip(), "application/zip"),
        (_tar(), "application/x-tar"),
        (gzip.compress(b"a"), "application/gzip"),
        (b"BM but only text", "application/octet-stream"),
    ],
)
def test_the_bytes_decide_the_content_type(data: bytes, content_type: str) -> None:
    value = "data:application/octet-stream;base64," + base64.b64encode(data).decode()
    assert Fetcher().fetch(value, field="file").content_type == content_type


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("data:image/png;base64", "not a valid data URI (expected data:[<type>][;base64],<data>)"),
        ("data:image/png;base64,iVBORw0KGgo*&^", "the data URI's base64 is not valid"),
        ("data:image/png;base64,iVBORw0KG", "the data URI's base64 is not valid (truncated)"),
        ("ftp://example.com/cat.png", "must be an http(s) URL or a data: URI"),
        ("/home/me/cat.png", "must be an http(s) URL or a data: URI"),
        ("http://", "the URL has no host"),
    ],
)
def test_malformed_references_are_refused_without_network(value: str, reason: str) -> None:
    assert check_reference(value) == reason
    assert _refusal(Fetcher(), value, field="mask") == f"mask: {reason}"


def test_an_oversized_data_uri_is_refused(fetcher: Fetcher) -> None:
    value = "data:application/octet-stream;base64," + base64.b64encode(b"x" * 4000).decode()
    assert check_reference(value) is None  # no size without a limit
    assert check_reference(value, max_bytes=1000) == (
        "the data URI holds about 4000 bytes, more than 1000"
    )
    assert _refusal(Fetcher(max_bytes=1000), value) == (
        "image: the data URI holds about 4000 bytes, more than 1000"
    )


# --- settings and the API -----------------------------------------------------------------


def test_the_fetcher_follows_the_settings(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLIGATE_FETCH_ALLOWED_NETWORKS", '["127.0.0.0/8"]')
    monkeypatch.setenv("REPLIGATE_FETCH_MAX_BYTES", "1000")
    monkeypatch.setenv("REPLIGATE_MAX_IMAGE_PIXELS", "100")
    fetcher = Fetcher.from_settings(Settings())
    assert _refusal(fetcher, f"{base}/huge") == "image: the file is larger than 1000 bytes"
    small = fetcher.fetch(
        f"data:;base64,{base64.b64encode(_png((16, 16))).decode()}", field="image"
    )
    with pytest.raises(FetchRefused, match=r"^image: the image is 16x16, more than .* 100 pixels"):
        small.image()
    assert Fetcher.from_settings(Settings()).fetch(f"{base}/text", field="x").data == (
        b"just some words"
    )
    monkeypatch.setenv("REPLIGATE_FETCH_ALLOWED_NETWORKS", "[]")
    assert "is loopback" in _refusal(Fetcher.from_settings(Settings()), f"{base}/text")
    monkeypatch.setenv("REPLIGATE_FETCH_ALLOW_PRIVATE", "true")
    assert Fetcher.from_settings(Settings()).fetch(f"{base}/text", field="x").content_type == (
        "text/plain"
    )


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """A server without weights: these requests never reach a model."""
    settings = Settings(data_dir=tmp_path / "data", log_flush_interval=0.0)
    with TestClient(create_app(settings)) as client:
        yield client, {"Authorization": f"Bearer {make_token(client)}"}


def _create(api: tuple[TestClient, dict[str, str]], image: str) -> Any:
    client, auth = api
    return client.post(
        "/v1/predictions",
        json={"version": IMG2IMG_VERSION, "input": {"image": image, "prompt": "a fox"}},
        headers=auth,
    )


@pytest.mark.parametrize(
    ("image", "description"),
    [
        ("data:image/png;base64,not*base64!", "the data URI's base64 is not valid"),
        ("data:image/png", "not a valid data URI (expected data:[<type>][;base64],<data>)"),
        ("file:///etc/passwd", "must be an http(s) URL or a data: URI"),
    ],
)
def test_a_malformed_file_input_is_a_422_at_create_time(
    api: tuple[TestClient, dict[str, str]], image: str, description: str
) -> None:
    response = _create(api, image)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["title"] == "Input validation failed"
    assert body["invalid_fields"] == [
        {"type": "format", "field": "input.image", "description": description}
    ]
    assert f"input.image: {description}" in body["detail"]


def test_an_address_is_not_judged_at_create_time(api: tuple[TestClient, dict[str, str]]) -> None:
    # The operator may allow private addresses; create time does not know the settings, so
    # this is judged when the file is fetched, not as a format error.
    response = _create(api, "http://10.0.0.5/cat.png")
    fields = response.json().get("invalid_fields") or []
    assert not [f for f in fields if f["field"] == "input.image"], response.text


def _img2img_over_http(settings: Settings, image_url: str) -> dict[str, Any]:
    with TestClient(create_app(settings)) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        response = client.post(
            "/replicate/v1/predictions",
            json={
                "version": IMG2IMG_VERSION,
                "input": {"image": image_url, "prompt": "a fox", "num_inference_steps": 2},
            },
            headers=auth,
        )
        body: dict[str, Any] = response.json()
        if body["status"] == "succeeded":
            picture = client.get(body["output"][0])
            body["_size"] = Image.open(io.BytesIO(picture.content)).size
        return body


def test_a_refused_fetch_fails_the_prediction_naming_the_input(
    base: str, tmp_path: Path, tiny_weights: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data", weights_dir=tiny_weights)
    body = _img2img_over_http(settings, f"{base}/png")
    assert body["status"] == "failed"
    assert body["error"].startswith("image: the address 127.0.0.1 is loopback"), body["error"]
    assert HINT in body["error"]


def test_an_operator_may_allow_loopback_inputs(
    base: str, tmp_path: Path, tiny_weights: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", weights_dir=tiny_weights, fetch_allow_private=True
    )
    body = _img2img_over_http(settings, f"{base}/png")
    assert body["status"] == "succeeded", body["error"]
    # img2img keeps the input's size, floored to a multiple of 32: 48x32 gives 32x32.
    assert body["_size"] == (32, 32)

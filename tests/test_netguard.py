"""The SSRF guard (repligate.netguard) as a fetch sees it: which addresses are refused and
why, names resolved and every answer checked, and connections pinned to the checked address
(plain HTTP and HTTPS) so a rebinding name cannot reach anything else.

Refusals of literal addresses need no network; the rest use the loopback server of
tests.fetch_server and a fake resolver that maps test names to chosen addresses.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator

import pytest

from repligate.fetch import Fetcher, check_reference
from repligate.netguard import AddressPolicy
from tests.fetch_server import HINT, LOOPBACK, PNG, fake_dns, local_server, refusal


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with local_server() as port:
        yield f"http://127.0.0.1:{port}"


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
    assert refusal(Fetcher(), f"http://{host}:8080/image.png") == f"image: {reason}"
    # The same judgment without any network, for a caller that knows the settings.
    assert check_reference(f"http://{host}/x.png", policy=AddressPolicy()) == reason


@pytest.mark.parametrize(
    ("host", "shown", "kind"),
    [("0.0.0.0", "0.0.0.0", "unspecified"), ("224.0.0.1", "224.0.0.1", "multicast")],
)
def test_addresses_no_fetch_can_use_are_refused(host: str, shown: str, kind: str) -> None:
    assert refusal(Fetcher(), f"http://{host}/x") == (
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


# --- name resolution and pinning ----------------------------------------------------------


def test_a_name_resolving_to_a_private_address_is_refused(
    base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(monkeypatch, {"images.example.test": [["10.0.0.7"]]})
    assert refusal(Fetcher(), "http://images.example.test/cat.png") == (
        f"image: images.example.test resolves to 10.0.0.7, which is private; {HINT}"
    )


def test_any_bad_address_among_the_answers_refuses_the_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_dns(monkeypatch, {"cdn.example.test": [["93.184.216.34", "127.0.0.1"]]})
    assert refusal(Fetcher(), "http://cdn.example.test/cat.png") == (
        f"image: cdn.example.test resolves to 127.0.0.1, which is loopback; {HINT}"
    )


def test_the_connection_is_pinned_to_the_checked_address(
    base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rebinding name: the first answer is the allowed one, later answers are not. The
    # fetch must resolve once and connect to what it checked, keeping the name as Host.
    port = base.rsplit(":", 1)[1]
    asked = fake_dns(monkeypatch, {"rebind.example.test": [["127.0.0.1"], ["10.9.9.9"]]})
    fetched = Fetcher(allowed_networks=LOOPBACK, timeout=5).fetch(
        f"http://rebind.example.test:{port}/host", field="image"
    )
    assert fetched.data == f"rebind.example.test:{port}".encode()
    assert asked == ["rebind.example.test"]


def test_redirect_targets_are_resolved_and_checked_too(
    base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(monkeypatch, {"internal.example.test": [["192.168.0.10"]]})
    target = "http://internal.example.test/admin"
    assert refusal(Fetcher(allowed_networks=LOOPBACK), f"{base}/redirect-to?url={target}") == (
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
    client_context = ssl.create_default_context(cafile=str(cert))
    with local_server(server_context) as port:
        yield port, client_context


def test_https_is_pinned_and_still_verifies_the_name(
    tls: tuple[int, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, context = tls
    fake_dns(monkeypatch, {"images.example.test": [["127.0.0.1"]]})
    fetcher = Fetcher(allowed_networks=LOOPBACK, ssl_context=context)
    # Connected to 127.0.0.1, yet SNI and the certificate check used the URL's name.
    assert fetcher.fetch(f"https://images.example.test:{port}/png", field="image").data == PNG
    # The same server by address: its certificate does not name 127.0.0.1.
    refused = refusal(fetcher, f"https://127.0.0.1:{port}/png")
    assert refused.startswith("image: could not connect to 127.0.0.1")
    assert "certificate" in refused.lower()

"""Replicate's files API over HTTP: upload (multipart), list, get, download, delete; the
size cap, the owner's key, expiry, and malformed uploads."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from repligate.settings import Settings
from repligate.testing.fakes import FakeClock
from tests.api_helpers import app_client, assert_problem
from tests.conftest import make_token

PREFIXES = ["", "/replicate"]
PAYLOAD = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


def upload(
    client: TestClient,
    auth: dict[str, str],
    data: bytes = PAYLOAD,
    *,
    prefix: str = "",
    name: str = "in.png",
    content_type: str = "image/png",
    fields: dict[str, str] | None = None,
) -> Any:
    return client.post(
        f"{prefix}/v1/files",
        files={"content": (name, data, content_type)},
        data=fields or {},
        headers=auth,
    )


def uploaded(client: TestClient, auth: dict[str, str], **kwargs: Any) -> dict[str, Any]:
    response = upload(client, auth, **kwargs)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def stored_uploads(client: TestClient) -> list[Path]:
    root = client.app.state.container.settings.files_dir / "uploads"  # type: ignore[attr-defined]
    return sorted(p for p in root.glob("*") if p.is_file()) if root.is_dir() else []


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
def other_auth(client: TestClient) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(client, 'other')}"}


@pytest.mark.parametrize("prefix", PREFIXES)
def test_upload_answers_the_file_object(
    client: TestClient, auth: dict[str, str], prefix: str
) -> None:
    body = uploaded(client, auth, prefix=prefix, fields={"metadata": json.dumps({"a": [1]})})
    assert body["name"] == "in.png"
    assert body["content_type"] == "image/png"
    assert body["size"] == len(PAYLOAD)
    assert body["checksums"] == {
        "sha256": hashlib.sha256(PAYLOAD).hexdigest(),
        "md5": hashlib.md5(PAYLOAD).hexdigest(),
    }
    assert body["etag"] == hashlib.md5(PAYLOAD).hexdigest()
    assert body["metadata"] == {"a": [1]}
    assert at(body["expires_at"]) - at(body["created_at"]) == timedelta(hours=24)
    assert body["urls"]["get"] == f"http://testserver{prefix}/v1/files/{body['id']}"
    assert body["urls"]["download"].startswith(f"{body['urls']['get']}/download?expiry=")


def test_filename_and_type_fields_win_over_the_part_headers(
    client: TestClient, auth: dict[str, str]
) -> None:
    body = uploaded(
        client,
        auth,
        name="../../etc/passwd",
        content_type="not a type",
        fields={"filename": "dir/photo.jpg", "type": "image/jpeg"},
    )
    assert (body["name"], body["content_type"]) == ("photo.jpg", "image/jpeg")
    plain = uploaded(client, auth, content_type="not a type", fields={"filename": "..\\x\x07.bin"})
    assert (plain["name"], plain["content_type"]) == ("x.bin", "application/octet-stream")


def test_get_list_download_and_delete(client: TestClient, auth: dict[str, str]) -> None:
    first = uploaded(client, auth, data=b"first")
    second = uploaded(client, auth, data=PAYLOAD, prefix="/replicate")

    got = client.get(f"/v1/files/{first['id']}", headers=auth)
    assert got.status_code == 200
    assert got.json() == first
    listing = client.get("/v1/files", headers=auth).json()
    assert [f["id"] for f in listing["results"]] == [second["id"], first["id"]]
    assert listing["next"] is None

    download = client.get(f"{second['urls']['get']}/download", headers=auth)
    assert download.status_code == 200
    assert download.content == PAYLOAD
    assert download.headers["content-type"] == "image/png"
    assert download.headers["content-length"] == str(len(PAYLOAD))
    assert download.headers["x-content-type-options"] == "nosniff"
    assert download.headers["content-disposition"].startswith("attachment;")
    assert len(stored_uploads(client)) == 2

    deleted = client.delete(f"/v1/files/{second['id']}", headers=auth)
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert_problem(client.get(f"/v1/files/{second['id']}", headers=auth), 404)
    assert_problem(client.get(f"/v1/files/{second['id']}/download", headers=auth), 404)
    assert_problem(client.get(second["urls"]["download"]), 404)
    assert_problem(client.delete(f"/v1/files/{second['id']}", headers=auth), 404)
    assert [f["id"] for f in client.get("/v1/files", headers=auth).json()["results"]] == [
        first["id"]
    ]
    # The bytes are gone, not just hidden.
    assert len(stored_uploads(client)) == 1


def test_the_signed_download_link_needs_no_key_and_cannot_be_forged(
    client: TestClient, auth: dict[str, str]
) -> None:
    body = uploaded(client, auth)
    link = body["urls"]["download"]
    response = client.get(link)
    assert response.status_code == 200
    assert response.content == PAYLOAD

    query = parse_qs(urlsplit(link).query)
    expiry, signature = query["expiry"][0], query["signature"][0]
    base = link.split("?")[0]
    forged = signature[:-2] + ("AA" if not signature.endswith("AA") else "BB")
    assert_problem(client.get(f"{base}?expiry={expiry}&signature={forged}"), 404)
    assert_problem(client.get(f"{base}?expiry={int(expiry) + 3600}&signature={signature}"), 404)
    assert_problem(client.get(f"{base}?expiry={expiry}"), 404)
    # Without a signature the owner's key is needed.
    assert_problem(client.get(base), 401)


def test_another_key_finds_nothing(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str]
) -> None:
    body = uploaded(client, auth)
    file_url = body["urls"]["get"]
    assert_problem(client.get(file_url, headers=other_auth), 404)
    assert_problem(client.get(f"{file_url}/download", headers=other_auth), 404)
    assert_problem(client.delete(file_url, headers=other_auth), 404)
    assert client.get("/v1/files", headers=other_auth).json()["results"] == []
    # Still there for its owner.
    assert client.get(file_url, headers=auth).status_code == 200


def test_the_files_api_needs_a_key(client: TestClient) -> None:
    assert_problem(upload(client, {}), 401)
    assert_problem(client.get("/v1/files"), 401)


@pytest.fixture
def small_cap(settings: Settings) -> Iterator[TestClient]:
    with app_client(settings, files_max_bytes=1000) as small:
        yield small


def test_a_file_over_the_cap_is_refused_with_413(small_cap: TestClient) -> None:
    auth = {"Authorization": f"Bearer {make_token(small_cap)}"}
    assert upload(small_cap, auth, data=b"x" * 1000).status_code == 201
    body = assert_problem(upload(small_cap, auth, data=b"x" * 1001), 413)
    assert body["detail"] == "Files must be less than 1000 bytes in size."
    # Far over: refused from Content-Length, before reading.
    assert_problem(upload(small_cap, auth, data=b"x" * 200_000), 413)
    assert [f["size"] for f in small_cap.get("/v1/files", headers=auth).json()["results"]] == [1000]
    assert len(stored_uploads(small_cap)) == 1


def test_a_streamed_body_is_cut_off_as_soon_as_it_passes_the_cap(small_cap: TestClient) -> None:
    """Straight through ASGI, so we see how much of the body the server read: a body with
    no Content-Length is refused once past the cap (the rest drained only within bounds),
    and nothing is stored."""
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="content"; filename="a.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    total = 1000  # 16 MB if it were all read
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        body = head if pulled == 1 else b"y" * 16384
        return {"type": "http.request", "body": body, "more_body": pulled < total}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    token = make_token(small_cap)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/files",
        "raw_path": b"/v1/files",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    asyncio.run(small_cap.app(scope, receive, send))  # type: ignore[arg-type]
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 413
    assert pulled < total // 10
    assert stored_uploads(small_cap) == []


def test_malformed_uploads_are_refused(client: TestClient, auth: dict[str, str]) -> None:
    assert_problem(client.post("/v1/files", json={"content": "x"}, headers=auth), 400)
    no_content = client.post(
        "/v1/files", files={"file": ("a.png", b"x", "image/png")}, headers=auth
    )
    assert "content" in assert_problem(no_content, 400)["detail"]
    as_field = client.post("/v1/files", data={"content": "x"}, files={"z": ("", b"")}, headers=auth)
    assert_problem(as_field, 400)
    for metadata in ("not json", "[1, 2]"):
        bad = upload(client, auth, fields={"metadata": metadata})
        assert "metadata" in assert_problem(bad, 422)["detail"]
    assert client.get("/v1/files", headers=auth).json()["results"] == []
    assert_problem(client.get("/v1/files?cursor=%%%", headers=auth), 422)


def test_the_list_pages_with_next(settings: Settings) -> None:
    with app_client(settings, list_page_size=2) as paged:
        auth = {"Authorization": f"Bearer {make_token(paged)}"}
        ids = [uploaded(paged, auth, data=bytes([i]))["id"] for i in range(3)]
        first = paged.get("/replicate/v1/files", headers=auth).json()
        assert [f["id"] for f in first["results"]] == ids[:0:-1]
        assert first["next"].startswith("http://testserver/replicate/v1/files?cursor=")
        second = paged.get(first["next"], headers=auth).json()
        assert [f["id"] for f in second["results"]] == [ids[0]]
        assert second["next"] is None


def test_an_expired_file_is_gone(client: TestClient, auth: dict[str, str]) -> None:
    body = uploaded(client, auth)
    uploads = client.app.state.container.uploads  # type: ignore[attr-defined]
    uploads.clock = FakeClock(datetime.now(UTC) + timedelta(hours=24, seconds=1))
    assert_problem(client.get(body["urls"]["get"], headers=auth), 404)
    assert_problem(client.get(f"{body['urls']['get']}/download", headers=auth), 404)
    assert_problem(client.get(body["urls"]["download"]), 404)
    assert client.get("/v1/files", headers=auth).json()["results"] == []
    assert stored_uploads(client) == []


def test_expired_files_bytes_are_swept_at_the_next_upload(
    client: TestClient, auth: dict[str, str]
) -> None:
    old = uploaded(client, auth, data=b"old")
    uploads = client.app.state.container.uploads  # type: ignore[attr-defined]
    uploads.clock = FakeClock(datetime.now(UTC) + timedelta(hours=25))
    new = uploaded(client, auth, data=b"new")
    assert [f["id"] for f in client.get("/v1/files", headers=auth).json()["results"]] == [new["id"]]
    assert [p.read_bytes() for p in stored_uploads(client)] == [b"new"]
    assert old["id"] != new["id"]


def test_a_short_ttl_setting_sets_expires_at(settings: Settings) -> None:
    with app_client(settings, files_ttl_seconds=60) as short:
        auth = {"Authorization": f"Bearer {make_token(short)}"}
        body = uploaded(short, auth)
        assert at(body["expires_at"]) - at(body["created_at"]) == timedelta(seconds=60)


def test_an_upload_is_not_served_by_the_public_output_route(
    client: TestClient, auth: dict[str, str]
) -> None:
    """Even whoever learns an upload's storage key gets nothing from /files/."""
    uploaded(client, auth, data=PAYLOAD)
    (path,) = stored_uploads(client)
    assert path.read_bytes() == PAYLOAD
    assert_problem(client.get(f"/files/uploads/{path.name}"), 404)

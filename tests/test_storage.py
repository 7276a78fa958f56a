"""The Storage interface, the same for every backend: the local disk, the in-memory fake
that ``repligate.testing`` ships, and S3 (moto's server over HTTP)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from repligate.storage.base import SCHEME, Storage, resolve_output
from repligate.storage.local import LocalStorage
from repligate.testing.fakes_storage import InMemoryStorage
from tests.s3_server import BUCKET, s3_endpoint

__all__ = ["s3_endpoint"]  # the fixture, used by name


@pytest.fixture(params=["local", "memory", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "files")
    if request.param == "s3":
        from repligate.storage.s3 import S3Storage

        endpoint = request.getfixturevalue("s3_endpoint")
        # A prefix of its own per test: the bucket is shared by the module.
        return S3Storage.connect(BUCKET, prefix=tmp_path.name, endpoint_url=endpoint)
    return InMemoryStorage()


def test_put_then_open_gives_the_bytes_back(storage: Storage) -> None:
    reference = storage.put("predictions/p1/out-0.png", b"png bytes", "image/png")
    assert reference == SCHEME + "predictions/p1/out-0.png"
    with storage.open("predictions/p1/out-0.png") as stream:
        assert stream.read() == b"png bytes"


def test_put_file_streams_from_the_current_position(storage: Storage) -> None:
    source = io.BytesIO(b"skip:" + b"z" * 3_000_000)
    source.seek(5)
    assert storage.put_file("uploads/big", source, "application/octet-stream") == (
        SCHEME + "uploads/big"
    )
    with storage.open("uploads/big") as stream:
        assert stream.read() == b"z" * 3_000_000


def test_put_replaces_and_delete_removes(storage: Storage) -> None:
    storage.put("a/b", b"one", "text/plain")
    storage.put("a/b", b"two", "text/plain")
    with storage.open("a/b") as stream:
        assert stream.read() == b"two"
    storage.delete("a/b")
    with pytest.raises(FileNotFoundError):
        storage.open("a/b")
    storage.delete("a/b")  # a missing key is not an error


def test_an_unknown_key_is_not_found(storage: Storage) -> None:
    with pytest.raises(FileNotFoundError):
        storage.open("nothing/here")


def test_urls_follow_the_base_url(storage: Storage) -> None:
    reference = storage.put("predictions/p1/out-0.png", b"x", "image/png")
    output = {"images": [reference, "plain text"]}
    assert resolve_output(output, storage, "http://host:8000/") == {
        "images": ["http://host:8000/files/predictions/p1/out-0.png", "plain text"]
    }


def test_local_storage_keeps_keys_inside_its_root(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "files")
    with pytest.raises(ValueError, match="escapes"):
        storage.put("../outside", b"x", "text/plain")
    (tmp_path / "secret").write_bytes(b"s")
    with pytest.raises(FileNotFoundError):
        storage.open("../secret")
    storage.delete("../secret")
    assert (tmp_path / "secret").exists()
    # A failed streamed write leaves nothing behind, not even a temporary file.

    class Broken(io.BytesIO):
        def read(self, size: int | None = -1, /) -> bytes:
            raise OSError("disk gone")

    with pytest.raises(OSError):
        storage.put_file("uploads/x", Broken(), "text/plain")
    assert list((tmp_path / "files" / "uploads").iterdir()) == []


def test_the_in_memory_fake_tells_what_was_written() -> None:
    storage = InMemoryStorage()
    storage.put("b", b"2", "image/png")
    storage.put_file("a", io.BytesIO(b"1"), "text/plain")
    assert storage.list_keys() == ["a", "b"]
    assert storage.content_type("b") == "image/png"
    assert storage.content_type("missing") is None

"""The upload service and the fetcher's reading of this server's own files, on the
in-memory storage fake: no HTTP, and a clock the tests move."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from repligate.errors import FileTooLarge, NotFound
from repligate.fetch import Fetcher, FetchRefused
from repligate.file_inputs import FileInputs
from repligate.records import ApiKey
from repligate.store import db, keys, migrate
from repligate.testing.fakes import FakeClock
from repligate.testing.fakes_storage import InMemoryStorage
from repligate.uploads import UploadService, size_text

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
START = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def storage() -> InMemoryStorage:
    return InMemoryStorage()


@pytest.fixture
def uploads(tmp_path: Path, storage: InMemoryStorage, clock: FakeClock) -> Iterator[UploadService]:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate.upgrade(engine)
    yield UploadService(
        sessions=db.make_sessions(engine),
        storage=storage,
        secret=b"s" * 32,
        clock=clock,
        max_bytes=1000,
    )
    engine.dispose()


def make_key(uploads: UploadService, name: str) -> ApiKey:
    with uploads._sessions() as session:
        key, _ = keys.create(session, name=name)
    return key


@pytest.fixture
def inputs(uploads: UploadService) -> FileInputs:
    return FileInputs(uploads, inline_max=1024, public_base_url="https://gate.example.test")


def fetcher(inputs: FileInputs) -> Fetcher:
    return Fetcher(local_files=inputs)


def test_create_hashes_stores_and_expires(
    uploads: UploadService, storage: InMemoryStorage, clock: FakeClock
) -> None:
    key = make_key(uploads, "a")
    made = uploads.create(key, io.BytesIO(PNG), name="a.png", content_type="image/png")
    assert made.size == len(PNG)
    assert made.expires_at == START + timedelta(hours=24)
    assert storage.list_keys() == [made.storage_key]
    assert storage.content_type(made.storage_key) == "image/png"
    # The storage key holds a secret part beyond the id.
    assert made.storage_key.startswith(f"uploads/{made.id}-") and len(made.storage_key) > 40
    assert uploads.get(key, made.id) == made
    clock.advance(24 * 3600)
    with pytest.raises(NotFound):
        uploads.get(key, made.id)
    assert storage.list_keys() == []


def test_the_cap_is_enforced_while_reading(
    uploads: UploadService, storage: InMemoryStorage
) -> None:
    key = make_key(uploads, "a")
    with pytest.raises(FileTooLarge, match="Files must be less than 1000 bytes in size"):
        uploads.create(key, io.BytesIO(b"x" * 1001), name="x", content_type="text/plain")
    assert storage.list_keys() == []
    assert uploads.list(key).results == []


def test_size_text_words_the_cap_as_replicate_does() -> None:
    assert size_text(100 * 1024 * 1024) == "100MB"
    assert size_text(2 * 1024**3) == "2GB"
    assert size_text(1536) == "1536 bytes"


def test_download_signatures_hold_only_for_their_file_and_expiry(
    uploads: UploadService, clock: FakeClock
) -> None:
    key = make_key(uploads, "a")
    made = uploads.create(key, io.BytesIO(PNG), name="a.png", content_type="image/png")
    other = uploads.create(key, io.BytesIO(PNG), name="b.png", content_type="image/png")
    query = dict(part.split("=", 1) for part in uploads.signed_query(made).split("&"))
    assert uploads.by_signature(made.id, query["expiry"], query["signature"]) == made
    for file_id, expiry, signature in (
        (other.id, query["expiry"], query["signature"]),
        (made.id, str(int(query["expiry"]) + 1), query["signature"]),
        (made.id, "9" * 5000, query["signature"]),
        (made.id, query["expiry"], ""),
    ):
        with pytest.raises(NotFound):
            uploads.by_signature(file_id, expiry, signature)
    clock.advance(24 * 3600)
    with pytest.raises(NotFound):
        uploads.by_signature(made.id, query["expiry"], query["signature"])


def test_the_fetcher_reads_own_files_from_storage_without_http(
    uploads: UploadService, inputs: FileInputs
) -> None:
    key = make_key(uploads, "a")
    made = uploads.create(key, io.BytesIO(PNG), name="a.png", content_type="image/png")
    url = f"http://127.0.0.1:9/v1/files/{made.id}"
    fetched = fetcher(inputs).fetch(url, field="image", owner=key.id)
    assert (fetched.data, fetched.content_type) == (PNG, "image/png")
    # Without the local files a loopback URL is refused, never fetched.
    with pytest.raises(FetchRefused, match=r"image: .*127\.0\.0\.1"):
        Fetcher().fetch(url, field="image")


def test_the_fetcher_refuses_another_keys_gone_or_unknown_files(
    uploads: UploadService, inputs: FileInputs, clock: FakeClock
) -> None:
    mine, theirs = make_key(uploads, "a"), make_key(uploads, "b")
    made = uploads.create(theirs, io.BytesIO(PNG), name="a.png", content_type="image/png")
    url = f"https://gate.example.test/v1/files/{made.id}"
    with pytest.raises(FetchRefused, match=r"image: file .* is not one of this API key's files"):
        fetcher(inputs).fetch(url, field="image", owner=mine.id)
    clock.advance(2 * 24 * 3600)
    with pytest.raises(FetchRefused, match=r"image: file .* expired at 2026-01-02T00:00:00Z"):
        fetcher(inputs).fetch(url, field="image", owner=theirs.id)
    unknown = "https://gate.example.test/v1/files/" + "b" * 26
    with pytest.raises(FetchRefused, match=r"image: file b+ is not one of"):
        fetcher(inputs).fetch(unknown, field="image", owner=mine.id)
    assert inputs.open("https://elsewhere.test/v1/files/" + "b" * 26, owner=mine.id) is None
    assert inputs.open("https://gate.example.test/v1/predictions/x", owner=mine.id) is None


def test_download_to_copies_an_own_file(
    uploads: UploadService, inputs: FileInputs, tmp_path: Path
) -> None:
    key = make_key(uploads, "a")
    made = uploads.create(key, io.BytesIO(b"t" * 900), name="w.tar", content_type="x/tar")
    target = tmp_path / "w.tar"
    url = f"http://localhost/replicate/v1/files/{made.id}"
    fetcher(inputs).download_to(url, target, field="replicate_weights")
    assert target.read_bytes() == b"t" * 900
    with pytest.raises(FetchRefused, match="900 bytes, more than 100"):
        fetcher(inputs).download_to(url, tmp_path / "small", field="w", max_bytes=100)
    assert not (tmp_path / "small").exists()

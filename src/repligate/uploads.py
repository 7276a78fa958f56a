"""Uploaded files, as Replicate's files API has them: create, get, list, delete, and the
signed download link. No HTTP and no SQL here.

A file belongs to the key that uploaded it: any other key finds nothing. It expires
``ttl`` after its upload; from then on (or once deleted) it is not listed, not served and
not usable as an input, and its bytes are removed by ``sweep`` (run before each upload,
and at once when a gone file is asked for). Its row stays, so a URL naming it is still
known as this server's own (``file_inputs.py``).

The download link (``/v1/files/{id}/download?expiry=…&signature=…``) works without a key
until the file expires: the signature is an HMAC-SHA256 of the id and the expiry under the
server's secret (``links.load_secret``), tagged with its purpose so it passes for nothing
else. ``urls.get`` and a download without a signature need the owner's key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, BinaryIO

from sqlalchemy.orm import Session, sessionmaker

from repligate import cursors
from repligate.clock import Clock
from repligate.errors import FileTooLarge, NotFound
from repligate.records import ApiKey, UploadedFile
from repligate.settings import Settings
from repligate.storage.base import Readable, Storage
from repligate.store import files as store

log = logging.getLogger(__name__)

# How many gone files' bytes one sweep removes at most (a sweep runs before each upload).
_SWEEP_BATCH = 20
# Keeps a download signature from passing for any other use of the same secret.
_PURPOSE = b"repligate-file-download"
# Unix seconds, ASCII digits only; a bounded length keeps int() cheap.
_EXPIRY = re.compile(r"[0-9]{1,12}")


def new_file_id() -> str:
    """26 lowercase base32 characters (128 random bits)."""
    return base64.b32encode(os.urandom(16)).decode().lower()[:26]


def size_text(size: int) -> str:
    """A size as Replicate words its limit ("100MB"), exact when it is not whole MB."""
    for unit, factor in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size} bytes"


@dataclass(frozen=True)
class FilePage:
    results: list[UploadedFile]
    next_cursor: str | None


class _HashingReader:
    """Reads ``source`` through, counting and hashing, and refuses past ``limit`` bytes."""

    def __init__(self, source: Readable, limit: int, too_large: str) -> None:
        self._source = source
        self._limit = limit
        self._too_large = too_large
        self.size = 0
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)

    def read(self, n: int = -1) -> bytes:
        chunk = self._source.read(n)
        self.size += len(chunk)
        if self.size > self._limit:
            raise FileTooLarge(self._too_large)
        self.sha256.update(chunk)
        self.md5.update(chunk)
        return chunk


class UploadService:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        storage: Storage,
        secret: bytes,
        clock: Clock,
        max_bytes: int = 100 * 1024 * 1024,
        ttl: timedelta = timedelta(hours=24),
        page_size: int = 100,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the signing secret must be at least 16 bytes")
        self._sessions = sessions
        self.storage = storage
        self._secret = secret
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._page_size = page_size
        # Settable, so a test can move time past an expiry without waiting.
        self.clock = clock

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        sessions: sessionmaker[Session],
        storage: Storage,
        secret: bytes,
        clock: Clock,
    ) -> UploadService:
        return cls(
            sessions=sessions,
            storage=storage,
            secret=secret,
            clock=clock,
            max_bytes=settings.files_max_bytes,
            ttl=timedelta(seconds=settings.files_ttl_seconds),
            page_size=settings.list_page_size,
        )

    @property
    def too_large(self) -> str:
        return f"Files must be less than {size_text(self.max_bytes)} in size."

    def create(
        self,
        key: ApiKey,
        source: Readable,
        *,
        name: str,
        content_type: str,
        metadata: dict[str, Any] | None = None,
    ) -> UploadedFile:
        """Store what ``source`` holds (read once, streamed) as a new file of ``key``."""
        self.sweep()
        file_id = new_file_id()
        # The secret part keeps the bytes out of reach of anything that serves storage
        # keys it is given (the public /files/ route for outputs).
        storage_key = f"uploads/{file_id}-{secrets.token_urlsafe(18)}"
        reader = _HashingReader(source, self.max_bytes, self.too_large)
        self.storage.put_file(storage_key, reader, content_type)
        now = self.clock.now()
        uploaded = UploadedFile(
            id=file_id,
            api_key_id=key.id,
            name=name,
            content_type=content_type,
            size=reader.size,
            sha256=reader.sha256.hexdigest(),
            md5=reader.md5.hexdigest(),
            metadata=metadata or {},
            storage_key=storage_key,
            created_at=now,
            expires_at=now + self.ttl,
            deleted_at=None,
            content_removed=False,
        )
        try:
            with self._sessions() as session:
                store.insert(session, uploaded)
        except BaseException:
            self.storage.delete(storage_key)
            raise
        return uploaded

    def find(self, file_id: str) -> UploadedFile | None:
        """Any file by id, whoever owns it and whether or not it is gone."""
        with self._sessions() as session:
            return store.get(session, file_id)

    def get(self, key: ApiKey, file_id: str) -> UploadedFile:
        """A live file of ``key``; NotFound for anything else (another key's looks missing)."""
        uploaded = self.find(file_id)
        if uploaded is None or uploaded.api_key_id != key.id:
            raise NotFound()
        return self._live(uploaded)

    def list(self, key: ApiKey, *, cursor: str | None = None) -> FilePage:
        before = cursors.decode(cursor, hint="use the next URL as given")[1] if cursor else None
        with self._sessions() as session:
            rows = store.page(
                session,
                api_key_id=key.id,
                now=self.clock.now(),
                limit=self._page_size + 1,
                before=before,
            )
        results = rows[: self._page_size]
        more = len(rows) > self._page_size
        return FilePage(
            results, cursors.encode(results[-1].created_at, results[-1].id) if more else None
        )

    def delete(self, key: ApiKey, file_id: str) -> None:
        uploaded = self.get(key, file_id)
        with self._sessions() as session:
            store.mark_deleted(session, uploaded.id, self.clock.now())
        self._remove_content(uploaded)

    def open(self, uploaded: UploadedFile) -> BinaryIO:
        """The bytes of a live file (checked again: it may have gone since it was read)."""
        self._live(uploaded)
        try:
            return self.storage.open(uploaded.storage_key)
        except FileNotFoundError:
            log.warning("file %s has a row but no bytes in storage", uploaded.id)
            raise NotFound() from None

    def signed_query(self, uploaded: UploadedFile) -> str:
        """The query string of the file's download link (valid until the file expires)."""
        expiry = int(uploaded.expires_at.timestamp())
        return f"expiry={expiry}&signature={self._signature(uploaded.id, expiry)}"

    def by_signature(self, file_id: str, expiry: str, signature: str) -> UploadedFile:
        """The live file a download link names; NotFound for a wrong or stale link."""
        if not _EXPIRY.fullmatch(expiry) or int(expiry) <= self.clock.now().timestamp():
            raise NotFound()
        if not hmac.compare_digest(self._signature(file_id, int(expiry)), signature):
            raise NotFound()
        uploaded = self.find(file_id)
        if uploaded is None:
            raise NotFound()
        return self._live(uploaded)

    def sweep(self, limit: int = _SWEEP_BATCH) -> int:
        """Remove the bytes of up to ``limit`` deleted or expired files; returns how many."""
        with self._sessions() as session:
            due = store.due_for_removal(session, now=self.clock.now(), limit=limit)
        for uploaded in due:
            self._remove_content(uploaded)
        return len(due)

    def _live(self, uploaded: UploadedFile) -> UploadedFile:
        if uploaded.gone(self.clock.now()):
            if not uploaded.content_removed:
                self._remove_content(uploaded)
            raise NotFound()
        return uploaded

    def _remove_content(self, uploaded: UploadedFile) -> None:
        self.storage.delete(uploaded.storage_key)
        with self._sessions() as session:
            store.mark_content_removed(session, uploaded.id)

    def _signature(self, file_id: str, expiry: int) -> str:
        message = b"\n".join((_PURPOSE, file_id.encode(), str(expiry).encode()))
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

"""Uploaded-file rows: insert, read, page a key's live files, mark deleted, and find the
ones whose bytes are due for removal."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.orm import Session

from repligate.records import UploadedFile
from repligate.store.rows import FileRow


def _record(row: FileRow) -> UploadedFile:
    return UploadedFile(
        id=row.id,
        api_key_id=row.api_key_id,
        name=row.name,
        content_type=row.content_type,
        size=row.size,
        sha256=row.sha256,
        md5=row.md5,
        metadata=row.user_metadata,
        storage_key=row.storage_key,
        created_at=row.created_at,
        expires_at=row.expires_at,
        deleted_at=row.deleted_at,
        content_removed=row.content_removed,
    )


def insert(session: Session, file: UploadedFile) -> None:
    session.add(
        FileRow(
            id=file.id,
            api_key_id=file.api_key_id,
            name=file.name,
            content_type=file.content_type,
            size=file.size,
            sha256=file.sha256,
            md5=file.md5,
            user_metadata=file.metadata,
            storage_key=file.storage_key,
            created_at=file.created_at,
            expires_at=file.expires_at,
            deleted_at=file.deleted_at,
            content_removed=file.content_removed,
        )
    )
    session.commit()


def get(session: Session, file_id: str) -> UploadedFile | None:
    row = session.get(FileRow, file_id, populate_existing=True)
    return _record(row) if row else None


def page(
    session: Session,
    *,
    api_key_id: str,
    now: datetime,
    limit: int,
    before: tuple[datetime, str] | None = None,
) -> list[UploadedFile]:
    """A key's files that are neither deleted nor expired, newest first; ``before`` is the
    (created_at, id) of the last file of the page already shown."""
    query = select(FileRow).where(
        FileRow.api_key_id == api_key_id,
        FileRow.deleted_at.is_(None),
        FileRow.expires_at > now,
    )
    if before is not None:
        at, last_id = before
        query = query.where(
            or_(FileRow.created_at < at, and_(FileRow.created_at == at, FileRow.id < last_id))
        )
    query = query.order_by(FileRow.created_at.desc(), FileRow.id.desc()).limit(limit)
    return [_record(r) for r in session.scalars(query)]


def mark_deleted(session: Session, file_id: str, at: datetime) -> bool:
    """Returns whether the file was live until now (a second delete changes nothing)."""
    result = session.execute(
        update(FileRow)
        .where(FileRow.id == file_id, FileRow.deleted_at.is_(None))
        .values(deleted_at=at)
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def mark_content_removed(session: Session, file_id: str) -> None:
    session.execute(update(FileRow).where(FileRow.id == file_id).values(content_removed=True))
    session.commit()


def due_for_removal(session: Session, *, now: datetime, limit: int) -> list[UploadedFile]:
    """Files deleted or expired whose bytes are still in storage, oldest expiry first."""
    query = (
        select(FileRow)
        .where(
            FileRow.content_removed.is_(False),
            or_(FileRow.expires_at <= now, FileRow.deleted_at.is_not(None)),
        )
        .order_by(FileRow.expires_at)
        .limit(limit)
    )
    return [_record(r) for r in session.scalars(query)]


def delete_gone_before(session: Session, cutoff: datetime, *, limit: int) -> int:
    """Delete the rows of files whose bytes are removed and that were gone (expired or
    deleted) at or before ``cutoff``; returns how many."""
    gone_before = or_(FileRow.expires_at <= cutoff, FileRow.deleted_at <= cutoff)
    ids = list(
        session.scalars(
            select(FileRow.id)
            .where(FileRow.content_removed.is_(True), gone_before)
            .order_by(FileRow.expires_at)
            .limit(limit)
        )
    )
    if ids:
        session.execute(delete(FileRow).where(FileRow.id.in_(ids)))
        session.commit()
    return len(ids)

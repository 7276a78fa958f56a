"""Engine and sessions. SQLite gets WAL, a busy timeout and foreign keys on connect.

The store's functions take a ``Db``: an ORM ``Session``, or a plain ``Connection``
(``connect``) where a session's bookkeeping would cost more than the statement itself:
the reads and writes made on every request and every step of a prediction (a session
doubles the cost of a primary-key read on SQLite).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

Db = Session | Connection


def make_engine(url: str, pool: dict[str, object] | None = None) -> Engine:
    """``pool``: the server's pool settings (``Settings.pool_options``), for a database
    across a network; SQLite ignores them."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # No cap on connections: the event loop reads inline (``reads_inline``) and must
        # never wait for a pool slot that worker threads hold.
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            max_overflow=-1,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            _use_wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    options: dict[str, Any] = {"pool_pre_ping": True, **(pool or {})}
    return create_engine(url, **options)


def make_sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def connect(sessions: sessionmaker[Session]) -> Connection:
    """A connection from the engine the sessions use; ``with`` it, and ``commit`` writes."""
    engine: Engine = sessions.kw["bind"]
    return engine.connect()


def reads_inline(sessions: sessionmaker[Session]) -> bool:
    """Whether a short read (one row by primary key or unique index) may run on the
    event loop itself rather than in a thread.

    True on SQLite: a local file in WAL mode, where readers never wait for writers and
    such a read takes tens of microseconds. Handing it to a thread and back costs more
    than that, about twice over, in CPU and interpreter-lock traffic, once requests
    arrive together. Not on a database across a network, whose round trip could stall
    every request the loop serves.
    """
    engine: Engine = sessions.kw["bind"]
    return engine.dialect.name == "sqlite"


class KeptConnection:
    """One connection kept open for the short reads that one thread, the event loop,
    makes one after another (``reads_inline``): taking a connection from the pool and
    giving it back costs about a third of such a read.

    Only the thread that used it first gets it, and only one use at a time; any other
    use gets a fresh connection from the pool. Each use ends with a rollback, so no
    transaction (and no snapshot of the database) outlives the read.
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._engine: Engine = sessions.kw["bind"]
        self._connection: Connection | None = None
        self._owner: int | None = None
        self._in_use = False
        self._lock = threading.Lock()

    @contextmanager
    def __call__(self) -> Iterator[Connection]:
        with self._lock:
            if self._owner is None:
                self._owner = threading.get_ident()
            mine = self._owner == threading.get_ident() and not self._in_use
            if mine:
                self._in_use = True
        if not mine:
            with self._engine.connect() as connection:
                yield connection
            return
        try:
            if self._connection is None or self._connection.invalidated:
                self._connection = self._engine.connect()
            yield self._connection
        finally:
            try:
                if self._connection is not None:
                    self._connection.rollback()
            finally:
                self._in_use = False

    def close(self) -> None:
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


def _use_wal(cursor: Any) -> None:
    """Switch the file to WAL, once: the mode is kept in the file, so a connection that
    finds it set does nothing. The switch itself answers "database is locked" at once,
    without waiting on the busy timeout, when another process holds the file (two
    processes opening a new database together): it is tried again for a while."""
    deadline = time.monotonic() + 30
    while cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        try:
            if cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() == "wal":
                return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error):
                raise
        if time.monotonic() > deadline:
            raise sqlite3.OperationalError("could not switch the database to WAL: locked")
        time.sleep(0.05)

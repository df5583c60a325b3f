"""The audit store's write turn: one integrator at a time, across threads and processes.

Appends and checkpoints must integrate one at a time. The database guarantees it: PostgreSQL
with ``pg_advisory_xact_lock``, SQLite with its write lock (``BEGIN IMMEDIATE``). But SQLite's
busy handler waits for its lock by *sleeping* (1, 2, 5, 10 ms ... between retries), so two
writers that collide cost the loser milliseconds, per collision, at thousands of appends a
second. The turn is therefore taken before the database is asked, from something that hands
over at once:

- a thread lock, for the threads of one process;
- on a SQLite file, also ``flock`` on a lock file beside it (``<database>-audit-lock``), for
  several broker processes on one node (``broker serve`` with worker processes): the kernel
  wakes the next process the moment the holder unlocks.

The kernel drops a dead process's ``flock``, but a *stopped* holder (SIGSTOP, a debugger)
keeps it, and ``flock`` has no timeout: the next leader then waits with it, while its
followers still fail closed after the log's ``append_timeout``.

The turn only orders writers; correctness never rests on it. Indices are still read from the
database under its own lock, so a process (or an old broker) that appends without the turn is
only slower, never wrong. PostgreSQL replicas live on several hosts, so there the thread lock
is all the turn adds; the advisory lock stays the integrator lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import sqlalchemy as sa

LOCK_SUFFIX: Final = "-audit-lock"
_SQLITE_AUTOCHECKPOINT: Final = 1000  # pages: SQLite's default


def lock_path(engine: sa.Engine) -> Path | None:
    """The lock file of a SQLite file database; None for PostgreSQL or an in-memory one."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database or ""
    if database.startswith("file:"):  # a URI filename: the path is before the query
        if "mode=memory" in database:
            return None
        database = database.removeprefix("file:").split("?", 1)[0]
    if database in {"", ":memory:"}:
        return None
    path = Path(database).expanduser().absolute()
    return path.with_name(path.name + LOCK_SUFFIX)


class WriteTurn:
    """A context manager: the thread lock, then (SQLite file) an exclusive ``flock``.

    The lock file is opened once per process (a forked child reopens it: a descriptor shared
    with the parent would share the parent's lock instead of excluding it) and closed when the
    turn is garbage-collected.
    """

    def __init__(self, path: Path | None) -> None:
        self._thread = threading.Lock()
        self._path = path
        self._fd = -1
        self._pid = 0
        self._closer: weakref.finalize[[int], WriteTurn] | None = None

    @property
    def path(self) -> Path | None:
        """The lock file, if the turn crosses processes."""
        return self._path

    def __enter__(self) -> None:
        self._thread.acquire()
        if self._path is None:
            return
        try:
            fcntl.flock(self._lock_file(), fcntl.LOCK_EX)
        except BaseException:
            self._thread.release()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._path is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread.release()

    def _lock_file(self) -> int:
        if self._pid != os.getpid():
            assert self._path is not None
            if self._closer is not None:
                self._closer()  # a forked child's copy of the parent's descriptor
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._closer = weakref.finalize(self, os.close, self._fd)
            self._pid = os.getpid()
        return self._fd


class WriterConnection:
    """The driver connection appends are written on, lent out under the write turn.

    PostgreSQL (and in-memory SQLite): a pooled connection per batch, so pre-ping replaces a
    connection a failover dropped. A SQLite file: one connection taken out of the pool and
    kept, because only the turn's holder uses it: no pool checkout per batch, and its WAL
    auto-checkpoint can be switched off on it alone while someone else checkpoints (see
    :meth:`defer_wal_checkpoints`). It is discarded after any failed batch and reopened in a
    forked child (SQLite connections must not cross ``fork``).
    """

    def __init__(self, engine: sa.Engine, *, keep: bool) -> None:
        self._engine = engine
        self._keep = keep
        self._kept: Any = None  # the kept DBAPI connection, detached from the pool
        self._pid = 0
        self._closer: weakref.finalize[[], WriterConnection] | None = None
        self._autocheckpoint = _SQLITE_AUTOCHECKPOINT

    @contextlib.contextmanager
    def driver(self) -> Iterator[Any]:
        """The DBAPI connection for one batch; the caller commits or rolls back."""
        if not self._keep:
            pooled = self._engine.raw_connection()
            try:
                yield pooled.driver_connection
            finally:
                pooled.close()
            return
        if self._kept is None or self._pid != os.getpid():
            self._open()
        try:
            yield self._kept
        except BaseException:
            self._discard()
            raise

    def defer_wal_checkpoints(self, defer: bool) -> None:
        """Stop (or resume) checkpointing the WAL in the committing thread (SQLite file only).

        SQLite checkpoints the WAL in the connection whose commit crossed 1000 pages: it copies
        them to the database file and fsyncs both files, which doubled the wall time of a
        batch at 10^6 entries. A caller that defers takes the duty on (``AuditStore.
        checkpoint_wal`` from the log's checkpointer thread); commits stay exactly as durable.
        """
        self._autocheckpoint = 0 if defer else _SQLITE_AUTOCHECKPOINT
        if self._kept is not None and self._pid == os.getpid():
            self._kept.execute(f"PRAGMA wal_autocheckpoint={self._autocheckpoint}")

    def _open(self) -> None:
        if self._closer is not None:
            self._closer.detach()  # a forked child's copy: left alone, never used
        pooled = self._engine.raw_connection()
        kept: Any = pooled.dbapi_connection
        pooled.detach()  # ours now; the pool opens another when it needs one
        kept.execute(f"PRAGMA wal_autocheckpoint={self._autocheckpoint}")
        self._kept, self._pid = kept, os.getpid()
        self._closer = weakref.finalize(self, kept.close)

    def _discard(self) -> None:
        if self._closer is not None:
            self._closer()
        self._kept, self._closer = None, None

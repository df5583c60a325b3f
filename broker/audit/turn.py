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

The turn only orders writers; correctness never rests on it. Indices are still read from the
database under its own lock, so a process (or an old broker) that appends without the turn is
only slower, never wrong. PostgreSQL replicas live on several hosts, so there the thread lock
is all the turn adds; the advisory lock stays the integrator lock.
"""

from __future__ import annotations

import fcntl
import os
import threading
import weakref
from pathlib import Path
from types import TracebackType
from typing import Final

import sqlalchemy as sa

LOCK_SUFFIX: Final = "-audit-lock"


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

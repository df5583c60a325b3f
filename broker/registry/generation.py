"""A registry change counter that every broker process of one node sees at once.

Why: a node runs several broker processes (``[server] workers``), each with its own
:class:`~broker.registry.cache.CachedResolver`. When a vendor retires a model through one of
them, the others must stop serving it at once, not after their cache's TTL. Each process maps
the same small file (``<data_dir>/run/registry.generation``); a committed change bumps the
counter in it, and a cached resolution is served only while the counter still has the value it
had when the resolution was read from the database. Reading the counter is a read of shared
memory (no system call), so the call path pays nothing measurable for it.

The file holds one counter per slot, and a model's slot is a stable hash (CRC-32) of its vendor
and name: a change to one model leaves the other models' cached answers alone (unless their
names share a slot, which only costs them one extra database read).

Scope: one node (one data directory). Replicas on other machines sharing a PostgreSQL database
are not told; there the cache's TTL bounds staleness, as documented in ``broker.registry.cache``.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import threading
import zlib
from pathlib import Path
from typing import Final, Protocol

_COUNTER: Final = struct.Struct("<Q")
SLOTS: Final = 4096


def slot_of(vendor: str, name: str) -> int:
    """The counter slot of model ``vendor/name``: the same in every process (not ``hash()``)."""
    return zlib.crc32(f"{vendor}/{name}".encode()) % SLOTS


class ChangeCounter(Protocol):
    """Monotonically growing counts of committed changes, one per model slot."""

    def current(self, slot: int) -> int:
        """The count of ``slot`` now."""
        ...

    def bump(self, slot: int) -> None:
        """Count one more change in ``slot`` (call it after the change is committed)."""
        ...

    def close(self) -> None:
        """Release what the counter holds (a mapped file); nothing may use it afterwards."""
        ...


class LocalChangeCounter:
    """Counters for one process (tests, and nodes whose processes share nothing)."""

    def __init__(self) -> None:
        self._values = [0] * SLOTS
        self._lock = threading.Lock()

    def current(self, slot: int) -> int:
        """The count of ``slot`` now."""
        return self._values[slot]

    def bump(self, slot: int) -> None:
        """Count one more change in ``slot``."""
        with self._lock:
            self._values[slot] += 1

    def close(self) -> None:
        """Nothing to release."""


class SharedChangeCounter:
    """Counters in a file that every process of the node maps (see the module docstring).

    Bumps are serialised by ``flock`` on the file, so concurrent bumps from several processes
    are never lost. Reads see an aligned 8-byte word, which x86-64 and arm64 read atomically.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_size < _COUNTER.size * SLOTS:
                    os.ftruncate(fd, _COUNTER.size * SLOTS)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            self._map = mmap.mmap(fd, _COUNTER.size * SLOTS, mmap.MAP_SHARED)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> SharedChangeCounter:
        """The node's counter under ``data_dir``."""
        return cls(data_dir / "run" / "registry.generation")

    def current(self, slot: int) -> int:
        """The count of ``slot`` now, as every process of the node sees it."""
        value: int = _COUNTER.unpack_from(self._map, slot * _COUNTER.size)[0]
        return value

    def bump(self, slot: int) -> None:
        """Count one more change in ``slot``, visible to every process at once."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            _COUNTER.pack_into(self._map, slot * _COUNTER.size, self.current(slot) + 1)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Unmap the file and close it (once; later calls do nothing)."""
        if self._map.closed:
            return
        self._map.close()
        os.close(self._fd)

"""Host uids for workers of a root broker: one per live worker, from a dedicated range.

``RLIMIT_NPROC`` counts every process of a *uid* (across user namespaces), not of a sandbox. Had
every worker the same host uid, one tenant's fork bomb would use up the process budget of every
other tenant's worker. So each live worker gets a uid (and the same number as its gid) of its own,
taken from ``[base, base + count)`` when it starts and given back when it has been reaped.

Two live workers never share an id, even across broker processes on one host (a server and a
``broker packages prepare`` run, say): an id is held by an ``flock`` on ``<lock_dir>/<uid>``,
which the kernel drops when the holder closes it or dies, so a crashed broker leaks nothing.
Ids are handed out round-robin, so a released id is the last to be reused.

Only a root broker uses this: a non-root broker's worker keeps the broker's own uid, mapped to
0 inside its user namespace (it cannot become anyone else).
"""

from __future__ import annotations

import errno
import fcntl
import os
import pwd
import stat
import threading
from pathlib import Path

from broker.errors import ResourceExhausted
from broker.logging import get_logger
from broker.runtimes.sandbox.errors import SandboxError, SandboxUnavailable

DEFAULT_BASE = 200_000
DEFAULT_COUNT = 1024
DEFAULT_LOCK_DIR = Path("/run/model-broker/worker-uids")
_MAX_ID = 2**32 - 2  # (uid_t)-1 means "no change" to setresuid

_log = get_logger(__name__)


class WorkerIdsExhausted(SandboxError, ResourceExhausted):
    """Every id of the range belongs to a live worker; no new worker can start until one ends."""

    def __init__(self, base: int, count: int) -> None:
        super().__init__(
            "the sandbox has no free worker on this node; retry later",
            log_reason=(
                f"all {count} sandbox worker uids [{base}, {base + count}) are held by live "
                "workers; raise [sandbox] worker_uid_count or lower the packages' concurrency"
            ),
        )


class WorkerIds:
    """Hands out host uids to workers; thread-safe, and safe between processes on one host."""

    def __init__(
        self,
        base: int = DEFAULT_BASE,
        count: int = DEFAULT_COUNT,
        *,
        lock_dir: Path = DEFAULT_LOCK_DIR,
    ) -> None:
        if base < 1:
            raise ValueError("worker uids must start above 0: a worker must never be host root")
        if count < 1 or base + count - 1 > _MAX_ID:
            raise ValueError(f"worker uid range [{base}, {base + count}) is not a valid range")
        self.base = base
        self.count = count
        self._lock_dir = lock_dir
        self._lock = threading.Lock()
        self._held: dict[int, int] = {}  # uid -> descriptor holding its flock
        self._cursor = 0
        self._dir_ready = False
        clashes = sorted(p.pw_name for p in pwd.getpwall() if base <= p.pw_uid < base + count)
        if clashes:
            # Not fatal (the worker still gets an id no other worker has), but files and
            # processes of these accounts would count as the worker's own.
            _log.warning(
                "sandbox_worker_uids_overlap_accounts",
                accounts=clashes[:10],
                base=base,
                count=count,
            )

    def acquire(self) -> int:
        """Reserve a free id for a new worker; raises :class:`WorkerIdsExhausted` when none is."""
        with self._lock:
            self._prepare_dir()
            for step in range(self.count):
                uid = self.base + (self._cursor + step) % self.count
                if uid in self._held:
                    continue
                fd = self._try_lock(uid)
                if fd is None:
                    continue
                self._held[uid] = fd
                self._cursor = (self._cursor + step + 1) % self.count
                return uid
        raise WorkerIdsExhausted(self.base, self.count)

    def release(self, uid: int) -> None:
        """Give ``uid`` back once no process of the worker is left; idempotent."""
        with self._lock:
            fd = self._held.pop(uid, None)
        if fd is not None:
            os.close(fd)  # drops the flock

    def held(self) -> frozenset[int]:
        """The ids this process holds now (for tests and metrics)."""
        with self._lock:
            return frozenset(self._held)

    def _try_lock(self, uid: int) -> int | None:
        fd = os.open(
            self._lock_dir / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None  # a live worker of this or another broker process holds it
            raise
        return fd

    def _prepare_dir(self) -> None:
        """Create the lock directory once; refuse one that others could write (fail closed)."""
        if self._dir_ready:
            return
        try:
            self._lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = self._lock_dir.lstat()
        except OSError as exc:
            raise SandboxUnavailable(
                [
                    f"cannot create {self._lock_dir} ({exc.strerror}): set [sandbox] "
                    "worker_uid_lock_dir to a directory only the broker's user can write"
                ]
            ) from exc
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
            raise SandboxUnavailable(
                [
                    f"{self._lock_dir} must be a directory owned by uid {os.geteuid()} that no one "
                    "else can write: it decides which sandbox workers may share a uid"
                ]
            )
        self._dir_ready = True

"""What the host gives one worker beyond its namespaces: a host uid of its own and a cgroup.

The launcher takes a :class:`WorkerLease` before it spawns a worker (the uid goes into the
spec), calls :meth:`WorkerLease.confine` with the worker's host pid before it sends the spec,
and :meth:`WorkerLease.release` once the worker's reaper has been waited for. The uid is given
back only after the worker's cgroup is gone, that is once none of its processes is left: a uid
whose processes linger would carry their count into the next worker's ``RLIMIT_NPROC``.
"""

from __future__ import annotations

import functools
import os
import threading

from broker.logging import get_logger
from broker.runtimes.sandbox.cgroups import Cgroups, WorkerGroup, default_cgroups
from broker.runtimes.sandbox.uids import WorkerIds
from sandbox.protocol import WorkerLimits

_log = get_logger(__name__)


class WorkerLease:
    """One worker's uid/gid and cgroup, from its start until it has been reaped."""

    def __init__(
        self, uid: int, gid: int, *, ids: WorkerIds | None, cgroups: Cgroups, limits: WorkerLimits
    ) -> None:
        if ids is not None and (uid == 0 or gid == 0):
            # (A non-root broker's ids pass through unchanged: its workers cannot change them.)
            raise ValueError("a sandbox worker must never run as host root (uid or gid 0)")
        self.uid = uid
        self.gid = gid
        self._ids = ids
        self._cgroups = cgroups
        self._limits = limits
        self._group: WorkerGroup | None = None
        self._lock = threading.Lock()
        self._released = False

    def confine(self, pid: int) -> None:
        """Put the worker's host ``pid`` in a cgroup of its own, if the host offers cgroups.

        Raises :class:`broker.runtimes.sandbox.cgroups.CgroupError` when a cgroup the host
        offered cannot be set up; the caller then must not start the worker.
        """
        group = self._cgroups.create(f"worker-{pid}", self._limits)
        with self._lock:
            self._group = group
        if group is not None:
            group.join(pid)

    def oom_killed(self) -> bool:
        """Whether the worker's cgroup saw an OOM kill (its memory limit, across the tree)."""
        with self._lock:
            group = self._group
        return group is not None and group.oom_killed()

    def intact(self) -> bool:
        """False once the worker's cgroup is gone or empty; True where no cgroup is used."""
        with self._lock:
            group = self._group
        return group is None or group.intact()

    def release(self) -> None:
        """Remove the cgroup, then give the uid back; idempotent. Call after the reaper exits."""
        with self._lock:
            if self._released:
                return
            self._released = True
            group = self._group
        emptied = group is None or group.remove()
        if self._ids is None:
            return
        if emptied:
            self._ids.release(self.uid)
        else:
            # Processes of this uid may still run: never hand it to another worker.
            _log.warning("sandbox_worker_uid_kept", uid=self.uid)


class HostConfinement:
    """Leases for new workers: uids from ``ids`` when the broker is root, cgroups if offered."""

    def __init__(self, ids: WorkerIds | None = None, cgroups: Cgroups | None = None) -> None:
        self._ids = ids
        self._cgroups = cgroups if cgroups is not None else default_cgroups()

    @property
    def cgroups(self) -> Cgroups:
        """The cgroup manager (its ``status`` says what is bounded per worker tree)."""
        return self._cgroups

    def lease(self, limits: WorkerLimits) -> WorkerLease:
        """Reserve what a new worker needs; raises ``WorkerIdsExhausted`` when no uid is free.

        A non-root broker's worker keeps the broker's own ids (mapped to 0 in its user
        namespace): it cannot become anyone else, so no uid is reserved.
        """
        if os.geteuid() != 0:
            return WorkerLease(
                os.geteuid(), os.getegid(), ids=None, cgroups=self._cgroups, limits=limits
            )
        ids = self._ids if self._ids is not None else default_worker_ids()
        uid = ids.acquire()
        return WorkerLease(uid, uid, ids=ids, cgroups=self._cgroups, limits=limits)


@functools.cache
def default_worker_ids() -> WorkerIds:
    """The uid allocator over the default range, made on first use by a root broker.

    Allocators over overlapping ranges may coexist (in one process or several): the lock files
    keep any id to one live worker.
    """
    return WorkerIds()

"""Per-worker resource limits, and how the worker applies them to itself with setrlimit.

rlimits are per process (the kernel has no per-sandbox rlimit); ``RLIMIT_NPROC`` counts the
processes of the worker's host uid, which is why a root broker gives every live worker a uid of
its own (:mod:`broker.runtimes.sandbox.uids`). Where the host delegates cgroups, the same
``memory_bytes`` (plus ``scratch_bytes``) and ``processes`` also bound the worker's whole process
tree (:mod:`broker.runtimes.sandbox.cgroups`); the rlimits apply in any case.
"""

from __future__ import annotations

import dataclasses
import resource
from typing import Any


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerLimits:
    """What one worker process may consume over its whole life.

    ``cpu_seconds`` is a lifetime cap on CPU time (``RLIMIT_CPU``): the pool recycles workers
    after a number of calls, and the caller's deadline bounds wall time per call.
    ``processes`` counts threads too, and every process of the worker's host uid (one uid per
    live worker under a root broker); the worker's cgroup, if any, allows one more task for its
    reaper. ``memory_bytes`` caps each process's address space and, with ``scratch_bytes``
    (tmpfs pages are charged to it), the cgroup's memory.
    """

    memory_bytes: int = 1024 * 1024 * 1024
    cpu_seconds: int = 60
    processes: int = 32
    open_files: int = 256
    file_size_bytes: int = 64 * 1024 * 1024
    scratch_bytes: int = 64 * 1024 * 1024
    max_frame_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"WorkerLimits.{field.name} must be a positive integer")

    def to_json(self) -> dict[str, int]:
        """The limits as a JSON object for the worker's start message."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerLimits:
        """Rebuild limits from :meth:`to_json` output."""
        return cls(**{f.name: int(data[f.name]) for f in dataclasses.fields(cls)})


def apply_rlimits(limits: WorkerLimits) -> None:
    """Set soft and hard rlimits; lowering a hard limit is irreversible for the process.

    The CPU hard limit sits one second above the soft one: the soft limit sends ``SIGXCPU``
    (fatal by default), the hard one ``SIGKILL`` for code that ignores ``SIGXCPU``.
    """
    pairs = {
        resource.RLIMIT_AS: (limits.memory_bytes, limits.memory_bytes),
        resource.RLIMIT_CPU: (limits.cpu_seconds, limits.cpu_seconds + 1),
        resource.RLIMIT_NPROC: (limits.processes, limits.processes),
        resource.RLIMIT_NOFILE: (limits.open_files, limits.open_files),
        resource.RLIMIT_FSIZE: (limits.file_size_bytes, limits.file_size_bytes),
        resource.RLIMIT_CORE: (0, 0),
        resource.RLIMIT_MEMLOCK: (0, 0),
        resource.RLIMIT_MSGQUEUE: (0, 0),
    }
    for which, pair in pairs.items():
        resource.setrlimit(which, pair)

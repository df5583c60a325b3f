"""How the worker applies its :class:`~sandbox.protocol.WorkerLimits` to itself with setrlimit.

rlimits are per process (the kernel has no per-sandbox rlimit); ``RLIMIT_NPROC`` counts the
processes of the worker's host uid, which is why a root broker gives every live worker a uid of
its own (``broker.runtimes.sandbox.uids``). Where the host delegates cgroups, the same
``memory_bytes`` (plus ``scratch_bytes``) and ``processes`` also bound the worker's whole process
tree (``broker.runtimes.sandbox.cgroups``, on the broker's side); the rlimits apply in any case.
"""

from __future__ import annotations

import resource

from sandbox.protocol import WorkerLimits


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

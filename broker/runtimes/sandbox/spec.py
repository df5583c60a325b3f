"""What the broker tells a new worker, and the exit codes through which the worker answers.

The spec travels as the first frame on the channel rather than on the command line, so nothing
about the package is visible in the host's process list. The exit codes are the only word the
outer reaper process (which stays outside the sandbox) has about how the worker died.
"""

from __future__ import annotations

import dataclasses
import signal
from typing import Any

from broker.runtimes.sandbox.limits import WorkerLimits

# Where things appear inside the worker's root. Runtime directories keep their host paths, so the
# interpreter's already-computed sys.path stays valid after pivot_root.
PACKAGE_MOUNT = "/package"
SCRATCH_MOUNT = "/scratch"
ENV_MOUNT_PREFIX = "/env"

# Exit codes of the reaper (the worker's parent outside its PID namespace).
EXIT_OK = 0
EXIT_SETUP_FAILED = 70  # the worker could not lock itself in; it never ran package code
EXIT_NAMESPACES_REFUSED = 71  # the kernel refused the namespaces: the sandbox is unavailable
EXIT_MEMORY = 72  # the package ran out of its address-space limit
EXIT_CPU = 128 + signal.SIGXCPU  # killed for CPU time, by SIGXCPU or by the hard-limit SIGKILL
EXIT_SECCOMP = 128 + signal.SIGSYS  # killed by the seccomp filter


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything the worker needs to build its sandbox and load the package.

    ``uid``/``gid``: the host ids the broker reserved for this worker alone (a root broker; see
    :mod:`broker.runtimes.sandbox.uids`), never 0. A non-root worker ignores them and keeps the
    broker's ids, mapped to 0 in its user namespace.
    """

    package_dir: str
    entry_point: str
    runtime_dirs: tuple[str, ...]
    env_dirs: tuple[str, ...]
    uid: int
    gid: int
    limits: WorkerLimits
    libseccomp: str
    hostname: str = "sandbox"

    def to_json(self) -> dict[str, Any]:
        """The spec as a JSON object for the start frame."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["limits"] = self.limits.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerSpec:
        """Rebuild a spec from :meth:`to_json` output."""
        return cls(
            package_dir=str(data["package_dir"]),
            entry_point=str(data["entry_point"]),
            runtime_dirs=tuple(str(d) for d in data["runtime_dirs"]),
            env_dirs=tuple(str(d) for d in data["env_dirs"]),
            uid=int(data["uid"]),
            gid=int(data["gid"]),
            limits=WorkerLimits.from_json(data["limits"]),
            libseccomp=str(data["libseccomp"]),
            hostname=str(data["hostname"]),
        )

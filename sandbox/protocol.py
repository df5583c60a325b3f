"""The wire between the broker and its sandbox: the one module both sides import.

Everything that crosses the boundary is defined here and nowhere else, so the two sides cannot
drift apart: the broker's host side (``broker.runtimes.sandbox``) imports this module, and
nothing else of the inside is loaded in the broker's process.

- **Frames** on the worker channel: a 4-byte big-endian length, then a JSON body. This module
  only frames bytes; each side brings its own JSON codec (the broker ``orjson``, the worker the
  standard library's ``json``, which imports in a fraction of orjson's start-up time). The reader
  checks the announced length against a cap *before* it allocates anything, so a worker that
  announces a 1 GiB answer costs the broker four bytes of reading, not a gigabyte of memory.
- **The start frame**: :class:`WorkerSpec` with its :class:`WorkerLimits`. It travels as the
  first frame on the channel rather than on the command line, so nothing about the package is
  visible in the host's process list.
- **Exit codes**: the only word the outer reaper process (which stays outside the sandbox) has
  about how the worker died.
- **The zygote's control messages** (``SOCK_SEQPACKET``, one message per datagram, descriptors
  by ``SCM_RIGHTS``); :mod:`sandbox.zygote` describes the exchange.

Standard library only, and nothing of ``broker``: the worker imports this before it locks
itself in, and the inside knows no policy, audit, keys or config.
"""

from __future__ import annotations

import dataclasses
import signal
import socket
import struct
import time
from typing import Any

# --- frames -------------------------------------------------------------------------------------

HEADER = struct.Struct(">I")


class FrameTooLargeError(Exception):
    """The peer announced (or we were about to send) a frame larger than the agreed cap."""

    def __init__(self, size: int, cap: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the cap of {cap} bytes")
        self.size = size
        self.cap = cap


class ChannelClosedError(EOFError):
    """The peer closed the channel, possibly in the middle of a frame."""


def pack(body: bytes, cap: int) -> bytes:
    """Prefix ``body`` with its length, refusing a body larger than ``cap``."""
    if len(body) > cap:
        raise FrameTooLargeError(len(body), cap)
    return HEADER.pack(len(body)) + body


def _recv_exactly(sock: socket.socket, size: int, deadline: float | None) -> bytes:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no complete frame before the deadline")
            sock.settimeout(remaining)
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise ChannelClosedError(f"channel closed after {got} of {size} bytes")
        got += n
    return bytes(buf)


def recv(sock: socket.socket, cap: int, deadline: float | None = None) -> bytes:
    """Read one frame's body; the announced length is checked against ``cap`` first.

    With a ``deadline`` (a ``time.monotonic()`` value) the whole frame must arrive before it,
    so a worker that drips one byte at a time cannot stretch the caller's deadline.
    """
    (size,) = HEADER.unpack(_recv_exactly(sock, HEADER.size, deadline))
    if size > cap:
        raise FrameTooLargeError(size, cap)
    return _recv_exactly(sock, size, deadline)


# --- the start frame ----------------------------------------------------------------------------

# Where things appear inside the worker's root. Runtime directories keep their host paths, so the
# interpreter's already-computed sys.path stays valid after pivot_root.
PACKAGE_MOUNT = "/package"
SCRATCH_MOUNT = "/scratch"
ENV_MOUNT_PREFIX = "/env"


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerLimits:
    """What one worker process may consume over its whole life.

    ``cpu_seconds`` is a lifetime cap on CPU time (``RLIMIT_CPU``): the pool recycles workers
    after a number of calls, and the caller's deadline bounds wall time per call.
    ``processes`` counts threads too, and every process of the worker's host uid (one uid per
    live worker under a root broker); the worker's cgroup, if any, allows one more task for its
    reaper. ``memory_bytes`` caps each process's address space and, with ``scratch_bytes``
    (tmpfs pages are charged to it), the cgroup's memory. The worker applies them to itself
    (:mod:`sandbox.rlimits`); the broker's cgroups bound the same over the whole process tree.
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


# --- exit codes of the reaper (the worker's parent outside its PID namespace) ------------------

EXIT_OK = 0
EXIT_SETUP_FAILED = 70  # the worker could not lock itself in; it never ran package code
EXIT_NAMESPACES_REFUSED = 71  # the kernel refused the namespaces: the sandbox is unavailable
EXIT_MEMORY = 72  # the package ran out of its address-space limit
EXIT_CPU = 128 + signal.SIGXCPU  # killed for CPU time, by SIGXCPU or by the hard-limit SIGKILL
EXIT_SECCOMP = 128 + signal.SIGSYS  # killed by the seccomp filter


# --- the zygote's control messages --------------------------------------------------------------

OP_START = b"S"
OP_MODULES = b"M"
REPLY_STARTED = b"P"
REPLY_FAILED = b"F"
REPLY_EXITED = b"X"
REPLY_MODULES = b"M"
REQUEST = struct.Struct("=cQ")  # op, request id
STARTED = struct.Struct("=cQi")  # P, request id, pid (and the child's pidfd)
FAILED = struct.Struct("=cQi")  # F, request id, errno
EXITED = struct.Struct("=cii")  # X, pid, exit code
MODULES = struct.Struct("=cQ")  # M, request id, then the names
MAX_MESSAGE = 64 * 1024  # the broker reads replies up to this size; requests are REQUEST.size

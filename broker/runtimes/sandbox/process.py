"""The broker's handle on a worker's outer process (its reaper), whoever started it.

A worker's reaper is either the broker's own child (``SandboxLauncher(zygote=False)``, spawned
with :mod:`subprocess`) or a child of the zygote (the default), which the broker can neither wait
for nor signal by pid: the pid may have been reused by the time the signal is sent. Both handles
therefore signal through a pidfd, opened while the process cannot yet have been reaped.
:class:`WorkerProcess` is what :class:`broker.runtimes.sandbox.launcher.Worker` needs of either.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from typing import Protocol


class WorkerProcess(Protocol):
    """A worker's reaper as the broker sees it."""

    @property
    def pid(self) -> int:
        """Host pid of the reaper (the worker itself is PID 1 of its own namespace)."""
        ...

    def exited(self) -> bool:
        """Whether the process has ended (or its fate can no longer be known)."""
        ...

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` s; the exit code (``-N`` for signal N), ``None`` if unknown."""
        ...

    def kill(self) -> None:
        """SIGKILL the process if it still runs; never blocks, never hits a reused pid."""
        ...


class Pidfd:
    """A pidfd that is closed exactly once and never used after, whatever the threads do.

    Closing a descriptor while another thread may still signal through it could send the signal
    to whatever reused the descriptor number; the lock rules that out.
    """

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd
        self._lock = threading.Lock()

    def kill(self) -> None:
        """SIGKILL the process, unless it has already gone (or the pidfd was closed)."""
        with self._lock:
            if self._fd is not None:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(self._fd, signal.SIGKILL)

    def close(self) -> None:
        """Release the descriptor; idempotent."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class SpawnedProcess:
    """A reaper that is the broker's own child (started without the zygote)."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self._pidfd = Pidfd(os.pidfd_open(popen.pid))  # nobody has waited for it yet

    @property
    def pid(self) -> int:
        """Host pid of the reaper."""
        return self._popen.pid

    def exited(self) -> bool:
        """Whether it has ended (this reaps it)."""
        if self._popen.poll() is None:
            return False
        self._pidfd.close()
        return True

    def wait(self, timeout: float) -> int | None:
        """The exit code, or ``None`` if it still runs after ``timeout`` s."""
        try:
            code = self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._pidfd.close()
        return code

    def kill(self) -> None:
        """SIGKILL through the pidfd; a no-op once the process is known to have ended."""
        self._pidfd.kill()

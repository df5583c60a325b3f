"""Start the bench's server processes and always stop them again.

Every process is registered on an ``ExitStack`` the moment it exists, so an exception, Ctrl-C
or SIGTERM (which ``cli`` turns into ``KeyboardInterrupt``) unwinds through the stack and stops
it. Servers also exit on their own when their stdin closes (see ``bench.servers``), which
covers a bench killed with SIGKILL. Only the processes started here are ever signalled, by pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_ROOT = Path(__file__).resolve().parent.parent


class ServerFailed(RuntimeError):
    """A server process died or never published its port; the message ends with its log."""


@dataclass
class ServerProcess:
    """A running server: its process, its loopback port and its log file."""

    role: str
    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def target(self) -> str:
        """``127.0.0.1:port``."""
        return f"127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """User plus system CPU time so far of the process and every live descendant.

        Descendants count because the broker serves from worker processes under a supervisor
        (``[server] workers``); the backend and the proxy have none. From /proc/PID/stat, whose
        resolution is one clock tick (10 ms), so callers measure over enough calls to make that
        negligible. A descendant that exits takes its time with it: none do while measured.
        """
        return tree_cpu_seconds(self.popen.pid)


def tree_cpu_seconds(*pids: int) -> float:
    """User plus system CPU seconds so far of each of ``pids`` and their live descendants."""
    return sum(_cpu_ticks(p) for pid in pids for p in _tree(pid)) / _CLOCK_TICKS


def spawn(
    stack: contextlib.ExitStack,
    workdir: Path,
    role: str,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> ServerProcess:
    """Start ``python -m bench.servers ROLE`` and wait until it serves; stopped by ``stack``."""
    port_file = workdir / f"{role}.port"
    log_path = workdir / f"{role}.log"
    log = log_path.open("wb")
    stack.callback(log.close)
    popen = subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
        [sys.executable, "-m", "bench.servers", role, str(port_file), *args],
        stdin=subprocess.PIPE,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=_ROOT,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # Ctrl-C reaches the bench only; the bench stops the servers
    )
    stack.callback(_stop, popen)
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if popen.poll() is not None or time.monotonic() > deadline:
            raise ServerFailed(f"{role} did not start:\n{_tail(log_path)}")
        time.sleep(0.02)
    return ServerProcess(role, popen, int(port_file.read_text(encoding="ascii")), log_path)


def _stop(popen: subprocess.Popen[bytes]) -> None:
    """Close stdin (the polite signal), then SIGTERM, then SIGKILL: each by this child's pid."""
    stdin: IO[bytes] | None = popen.stdin
    with contextlib.suppress(OSError):
        if stdin is not None:
            stdin.close()
    for sig, wait in ((None, 3.0), (signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        if sig is not None and popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(wait)
        if popen.poll() is not None:
            return


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _cpu_ticks(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except FileNotFoundError:  # exited since it was listed
        return 0
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces
    return int(fields[11]) + int(fields[12])  # utime, stime


def _tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (/proc/PID/task/TID/children)."""
    found, index = [pid], 0
    while index < len(found):
        tasks = Path(f"/proc/{found[index]}/task")
        index += 1
        with contextlib.suppress(FileNotFoundError):
            for task in tasks.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    found += [int(c) for c in (task / "children").read_text().split()]
    return found

"""What the demo's helper servers (MLServer, llama.cpp's server) share: their process group.

Each runs in its own session (``start_new_session=True``) so that stopping it reaches every
process it forked; ``ChildServer.stop`` sends SIGTERM to the group and SIGKILL after a grace
period. Ports are picked by binding port 0 and releasing it (another process could take the port
in between; the server then fails to start and its log tail says so).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

LOG_TAIL_BYTES = 4000


@dataclass
class ChildServer:
    """A server process started by the demo, with its log file."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, grace_seconds: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace_seconds``; idempotent."""
        if self.process.poll() is not None:
            return
        signal_group(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log_tail(self) -> str:
        """The end of the server's log, for error messages."""
        return tail(self.log_path)


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal a process group; a group that is already gone is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def tail(path: Path) -> str:
    """The last ``LOG_TAIL_BYTES`` of a log file, as text."""
    try:
        data = path.read_bytes()
    except OSError:
        return "(no log)"
    return data[-LOG_TAIL_BYTES:].decode("utf-8", "replace")

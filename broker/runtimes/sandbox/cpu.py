"""Per-call CPU budgets, watched from the broker's side.

``RLIMIT_CPU`` counts a process's whole life, but a manifest promises CPU seconds *per call*.
Moving a running worker's rlimit from outside (``prlimit``) needs ``CAP_SYS_RESOURCE``, which
container runtimes drop, so instead one watchdog thread per pool set reads, every ``interval``,
the CPU time of each worker that is in a call (``/proc/PID/stat``) and kills the worker once it
has used its budget since the watchdog first saw the call (precision: one interval). The
lifetime ``RLIMIT_CPU`` stays as the kernel-enforced backstop. The worker's host pid is the only
child of its reaper (``/proc/PID/task/PID/children``); where the kernel hides that file the
watchdog cannot watch, says so once, and the lifetime cap and the caller's deadline still hold.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from broker.logging import get_logger

_log = get_logger(__name__)
_TICKS = os.sysconf("SC_CLK_TCK")


def worker_pid(reaper_pid: int) -> int | None:
    """Host pid of the worker under ``reaper_pid``, or None when it cannot be found."""
    try:
        children = Path(f"/proc/{reaper_pid}/task/{reaper_pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if len(children) == 1 else None


def cpu_used(pid: int) -> float:
    """CPU seconds (user + system, all threads) the process has used so far."""
    # The command name (field 2) may contain spaces: split after its closing parenthesis.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime: fields 14 and 15


class CallCpu:
    """The CPU time one call used in its worker, for the call's usage record (billing).

    Read from ``/proc`` when the call starts and when it ends, synchronously (the watchdog's
    own baseline is taken up to one interval late, which is fine for a budget, not for a bill).
    Precision is the kernel's clock tick (10 ms at 100 Hz). A worker whose pid cannot be found,
    or that is gone when the call ends (killed: cancelled, over a limit), bills 0.
    """

    __slots__ = ("_pid", "_start")

    def __init__(self, reaper_pid: int) -> None:
        self._pid: int | None = None
        self._start = 0.0
        try:
            pid = worker_pid(reaper_pid)
            if pid is not None:
                self._start = cpu_used(pid)
                self._pid = pid
        except (OSError, ValueError, IndexError):
            self._pid = None

    def used_us(self) -> int:
        """Microseconds of CPU (user + system) used since this object was made; 0 if unknown."""
        if self._pid is None:
            return 0
        try:
            return max(round((cpu_used(self._pid) - self._start) * 1_000_000), 0)
        except (OSError, ValueError, IndexError):
            return 0


@dataclass
class _Watch:
    reaper_pid: int
    budget: float
    on_exceeded: Callable[[], None]
    pid: int | None = None
    baseline: float = 0.0


class CpuWatchdog:
    """Kills workers that spend more than their per-call CPU budget; one thread, started lazily."""

    def __init__(self, interval: float = 0.1) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._watches: dict[int, _Watch] = {}
        self._ids = itertools.count()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False

    def watch(self, reaper_pid: int, budget: float, on_exceeded: Callable[[], None]) -> int:
        """Start watching one call; returns a token for :meth:`unwatch`."""
        token = next(self._ids)
        with self._lock:
            self._watches[token] = _Watch(reaper_pid, budget, on_exceeded)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="sandbox-cpu-watchdog", daemon=True
                )
                self._thread.start()
        return token

    def unwatch(self, token: int) -> None:
        """Stop watching a call (it ended)."""
        with self._lock:
            self._watches.pop(token, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                watches = list(self._watches.items())
                if not watches:
                    self._thread = None
                    return
            for token, watch in watches:
                if self._over_budget(watch):
                    self.unwatch(token)
                    watch.on_exceeded()
            self._wake.wait(self._interval)

    def _over_budget(self, watch: _Watch) -> bool:
        try:
            if watch.pid is None:
                watch.pid = worker_pid(watch.reaper_pid)
                if watch.pid is None:
                    self._warn_once()
                    return False
                watch.baseline = cpu_used(watch.pid)
                return False
            return cpu_used(watch.pid) - watch.baseline > watch.budget
        except (OSError, ValueError, IndexError):
            return False  # the worker is gone; its call reports that

    def _warn_once(self) -> None:
        if not self._warned:
            self._warned = True
            _log.warning("sandbox_cpu_budget_unavailable", reason="no /proc children file")

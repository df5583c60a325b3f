"""The launcher's process handling: a child that exited is reaped, whenever it exited."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from broker.cluster.launcher import spawn


def test_wait_reaps_a_child_that_exits_between_poll_and_proc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    child = spawn("quick", [sys.executable, "-c", "pass"], tmp_path / "quick.log")
    popen = child.popen
    assert popen is not None
    # Wait for the exit without reaping it, so the child is a zombie in /proc ...
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    # ... while the launcher's short wait and poll() last saw it running: it exited just after.
    real_wait = popen.wait

    def short_waits_time_out(timeout: float | None = None) -> int:
        if timeout is not None and timeout <= 0.1:
            raise subprocess.TimeoutExpired(popen.args, timeout)
        return real_wait(timeout)

    monkeypatch.setattr(popen, "wait", short_waits_time_out)
    monkeypatch.setattr(popen, "poll", lambda: None)

    assert child.wait(5)
    assert popen.returncode == 0

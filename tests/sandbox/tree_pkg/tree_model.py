"""A test model that grows a process tree: forks that it holds, and children that eat memory.

The per-process rlimits cannot see a tree; the worker's cgroup (and its own host uid) can. The
tests in ``test_cgroups.py`` and ``test_worker_uids.py`` use it to prove so.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from typing import Any

_HELD: list[int] = []


def _fork_hold(count: int) -> dict[str, Any]:
    """Fork up to ``count`` sleeping children and keep them; report how far it got and why."""
    failure = None
    for _ in range(count):
        try:
            pid = os.fork()
        except OSError as exc:
            failure = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            break
        if pid == 0:
            time.sleep(300)
            os._exit(0)
        _HELD.append(pid)
    return {"held": len(_HELD), "error": failure}


def _fork_some(count: int) -> dict[str, Any]:
    """Fork ``count`` children that exit at once; all of them must succeed."""
    done = 0
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        done += 1
    return {"forked": done}


def _hog_tree(children: int, mib: int) -> dict[str, Any]:
    """Fork ``children`` that each fill ``mib`` MiB (below the per-process cap), then wait."""
    pids = []
    for _ in range(children):
        pid = os.fork()
        if pid == 0:
            hog = b"\x01" * (mib * 1024 * 1024)  # written, so resident, unlike bytearray(n)
            time.sleep(2)
            os._exit(len(hog) % 2)
        pids.append(pid)
    killed = 0
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            killed += 1
    return {"children": children, "killed": killed}


def answer(payload: dict[str, Any]) -> dict[str, Any]:
    """Run the action named in ``payload["do"]``."""
    action = payload.get("do", "echo")
    if action == "fork_hold":
        return _fork_hold(int(payload["count"]))
    if action == "fork_some":
        return _fork_some(int(payload["count"]))
    if action == "hog_tree":
        return _hog_tree(int(payload["children"]), int(payload["mib"]))
    if action == "print":
        print(payload["text"], flush=True)
        return {"printed": True}
    return {"uid": os.getuid(), "gid": os.getgid()}

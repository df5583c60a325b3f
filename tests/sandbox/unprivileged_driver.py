"""Run part of the escape battery from a broker that is *not* root; print one JSON object.

``test_unprivileged.py`` starts this script as an unprivileged host user under a world-readable
``python3.11`` (the venv's interpreter lives under ``/root``), with ``PYTHONPATH`` naming only the
repository and the few packages the launcher imports. Workers started from here take the
non-root path: they create their own user namespace instead of switching to a worker uid.

Input (stdin, JSON): ``escape_package``, ``echo_package``, ``secret`` (a file this user owns,
outside the packages) and ``limits`` (``WorkerLimits.to_json()``). Output: one stdout line,
``RESULT_PREFIX`` + ``{"uid": ..., "results": {probe name: outcome}}`` (the broker's own log
lines share stdout), where an outcome is the model's answer, or
``{"raised": class name, "limit": ...}`` when the broker's side raised. The test asserts on each
probe by name, so one broken wall fails one named test. Only this driver's own listener and
files are used; it never prints payload values other than the probes' own.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker.runtimes.sandbox.errors import SandboxError
from broker.runtimes.sandbox.launcher import SandboxLauncher, Worker
from sandbox.protocol import WorkerLimits

AF_VSOCK = 40
AF_NETLINK = 16
PTRACE_ATTACH = 16
CLONE_FLAGS = {"newuser": 0x10000000, "newns": 0x00020000, "newnet": 0x40000000}
WRITE_TARGETS = ("/evil", "/package/evil", "/package/escape_model.py", "/tmp/evil", "/proc/evil")
EXEC_TARGETS = ("/bin/sh", sys.executable, os.path.realpath(sys.executable))

RESULT_PREFIX = "unprivileged-driver-results: "
Outcome = dict[str, Any]


class Battery:
    """One escape-package worker at a time, replaced when a probe kills it."""

    def __init__(self, launcher: SandboxLauncher, package: Path, limits: WorkerLimits) -> None:
        self._launcher = launcher
        self._package = package
        self._limits = limits
        self._worker: Worker | None = None

    def attempt(self, payload: dict[str, Any], timeout: float = 10.0) -> Outcome:
        """The escape model's answer to ``payload``, or what the broker's side raised."""
        if self._worker is None or not self._worker.alive:
            self._worker = self._launcher.start(
                self._package, limits=self._limits, tenant="unprivileged"
            )
        try:
            return self._worker.call(payload, timeout=timeout)
        except SandboxError as exc:
            return {"raised": type(exc).__name__, "limit": getattr(exc, "limit", None)}

    @property
    def worker(self) -> Worker | None:
        """The current worker (for namespace checks from outside)."""
        return self._worker

    def close(self) -> None:
        """Kill the current worker."""
        if self._worker is not None:
            self._worker.kill()


def _loopback(battery: Battery) -> Outcome:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        answer = battery.attempt(
            {"attempt": "socket", "family": 2, "type": 1, "host": "127.0.0.1", "port": port}
        )
        listener.settimeout(0.2)
        try:
            listener.accept()[0].close()
            answer["listener_accepted"] = True
        except TimeoutError:
            answer["listener_accepted"] = False
    return answer


def _outside(battery: Battery) -> Outcome:
    answers = {}
    for family, host in ((socket.AF_INET, "10.255.255.1"), (socket.AF_INET6, "::1")):
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            payload = {"attempt": "socket", "family": family, "type": kind, "host": host}
            answers[f"{host}/{kind}"] = battery.attempt({**payload, "port": 80})
    return answers


def _namespaces(battery: Battery) -> Outcome:
    """The worker's user namespace differs from ours: the non-root path was taken."""
    battery.attempt({"attempt": "exists", "path": "/"})
    worker = battery.worker
    assert worker is not None  # attempt() started one
    try:
        theirs = str(Path(f"/proc/{worker.pid}/ns/user").readlink())
    except OSError as exc:
        return {"error": type(exc).__name__}
    return {"ours": str(Path("/proc/self/ns/user").readlink()), "theirs": theirs}


def probes(
    battery: Battery, echo: Callable[[dict[str, Any]], Outcome], secret: Path
) -> dict[str, Callable[[], Any]]:
    """Probe name -> how to run it; the names are what the test asserts on."""
    own_read = secret.read_text()  # this user can read it, so only the sandbox can refuse it
    libc = {"attempt": "libc"}
    return {
        "namespaces": lambda: _namespaces(battery),
        "echo_package": lambda: echo({"note": "héllo", "n": [1, 2.5, None]}),
        "status": lambda: battery.attempt({"attempt": "echo"})["status"],
        "loopback": lambda: _loopback(battery),
        "outside": lambda: _outside(battery),
        "own_file": lambda: {
            "driver_read": own_read,
            **battery.attempt({"attempt": "read", "path": str(secret)}),
        },
        "write": lambda: {
            p: battery.attempt({"attempt": "write", "path": p}) for p in WRITE_TARGETS
        },
        "scratch": lambda: battery.attempt({"attempt": "write", "path": "/scratch/ok"}),
        "exec": lambda: {p: battery.attempt({"attempt": "exec", "path": p}) for p in EXEC_TARGETS},
        "unshare": lambda: {
            name: battery.attempt({**libc, "name": "unshare", "args": [flag]})
            for name, flag in CLONE_FLAGS.items()
        },
        "mount": lambda: battery.attempt(
            {**libc, "name": "mount", "args": ["none", "/scratch", "tmpfs", 0, 0]}
        ),
        "ptrace": lambda: battery.attempt(
            {**libc, "name": "ptrace", "args": [PTRACE_ATTACH, os.getpid(), 0, 0]}
        ),
        "vsock": lambda: battery.attempt({"attempt": "socket", "family": AF_VSOCK, "type": 1}),
        "netlink": lambda: battery.attempt({"attempt": "socket", "family": AF_NETLINK, "type": 3}),
        "fork_bomb": lambda: battery.attempt({"attempt": "fork_bomb", "count": 500}),
        "memory": lambda: battery.attempt({"attempt": "allocate", "mib": 512}),
        "cpu": lambda: battery.attempt({"attempt": "spin"}, timeout=30),
    }


def main() -> None:
    """Read the job from stdin, run every probe, print the results as one JSON object."""
    job = json.loads(sys.stdin.read())
    limits = WorkerLimits.from_json(job["limits"])
    launcher = SandboxLauncher()
    battery = Battery(launcher, Path(job["escape_package"]), limits)

    def echo(payload: dict[str, Any]) -> Outcome:
        with launcher.start(Path(job["echo_package"]), limits=limits, tenant="echo") as worker:
            return worker.call(payload, timeout=10)

    results: dict[str, Any] = {}
    try:
        for name, probe in probes(battery, echo, Path(job["secret"])).items():
            try:
                results[name] = probe()
            except Exception as exc:  # noqa: BLE001 - reported per probe; the test fails it
                results[name] = {"driver_error": f"{type(exc).__name__}: {exc}"}
    finally:
        battery.close()
    report = {"uid": os.getuid(), "python": sys.version, "results": results}
    print(RESULT_PREFIX + json.dumps(report), flush=True)


if __name__ == "__main__":
    main()

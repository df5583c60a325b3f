"""Sandbox: cold start and warm round trip of a sandboxed worker, against a plain subprocess.

The same echo model (``answer(payload) -> {"echo": payload}``) runs three ways: in a sandboxed
worker forked by the launcher's zygote (the default: namespaces, seccomp, Landlock, limits), in
a sandboxed worker that is a fresh interpreter of its own (``SandboxLauncher(zygote=False)``),
and in an unsandboxed subprocess worker speaking length-prefixed JSON over pipes, the cheapest
design a broker could use without isolation. Cold start is from asking for a worker to its first
answer (the zygote is already running: its own start is measured apart, as the first worker of a
new launcher); the warm round trip sends the workload's 2 KB payload to a running worker. The
gap to the plain worker is the price of isolation.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import orjson

from bench import workload
from bench.micro import seconds_per_call
from bench.sections import NotAvailable, Section
from bench.settings import Settings
from bench.stats import Figure

_MODEL = "def answer(payload):\n    return {'echo': payload}\n"
_PLAIN_WORKER = """
import struct, sys, orjson
sys.path.insert(0, sys.argv[1])
from bench_model import answer
inp, out = sys.stdin.buffer, sys.stdout.buffer
while True:
    head = inp.read(4)
    if len(head) < 4:
        break
    body = inp.read(struct.unpack('>I', head)[0])
    reply = orjson.dumps(answer(orjson.loads(body)))
    out.write(struct.pack('>I', len(reply)) + reply)
    out.flush()
"""


class _PlainWorker:
    """An unsandboxed subprocess worker: the baseline the sandbox is compared with."""

    def __init__(self, package: Path) -> None:
        self._proc = subprocess.Popen(  # noqa: S603 - our interpreter and script, no shell
            [sys.executable, "-c", _PLAIN_WORKER, str(package)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def call(self, payload: dict[str, Any], timeout: float = 10.0) -> Any:
        """One round trip (``timeout`` is unused: the same signature as a sandboxed worker)."""
        stdin: IO[bytes] = self._proc.stdin  # type: ignore[assignment]
        stdout: IO[bytes] = self._proc.stdout  # type: ignore[assignment]
        body = orjson.dumps(payload)
        stdin.write(struct.pack(">I", len(body)) + body)
        stdin.flush()
        size = struct.unpack(">I", stdout.read(4))[0]
        return orjson.loads(stdout.read(size))

    def kill(self) -> None:
        """Kill our own child by its pid and reap it."""
        with contextlib.suppress(OSError):
            self._proc.kill()
        self._proc.wait(5)


def run(settings: Settings) -> list[Figure]:
    """Start and call workers all three ways, ``settings.repeat`` rounds."""
    from broker.runtimes.sandbox.launcher import SandboxLauncher  # noqa: PLC0415 - optional
    from broker.runtimes.sandbox.probe import sandbox_support  # noqa: PLC0415
    from sandbox.protocol import WorkerLimits  # noqa: PLC0415

    missing = sandbox_support()
    if missing:
        raise NotAvailable("; ".join(missing))
    payload = workload.payload()
    starts = 2 if settings.quick else 5
    cold = Figure("sandboxed worker cold start, zygote", "ms", note=f"mean of {starts} starts")
    fresh_cold = Figure(
        "sandboxed worker cold start, fresh interpreter", "ms", note=f"mean of {starts} starts"
    )
    first = Figure("first worker of a new launcher (zygote start-up included)", "ms")
    warm = Figure("sandboxed worker warm round trip", "µs/call", note="2 KB payload")
    plain_cold = Figure("plain subprocess worker cold start", "ms", note=f"mean of {starts}")
    plain_warm = Figure("plain subprocess worker warm round trip", "µs/call", note="2 KB payload")
    package = Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
    try:
        package.chmod(0o755)
        (package / "bench_model.py").write_text(_MODEL, encoding="utf-8")
        fresh = SandboxLauncher(startup_timeout=30.0, zygote=False)

        def starter(launcher: SandboxLauncher) -> Any:
            return lambda: launcher.start(
                package, limits=WorkerLimits(), tenant="bench", entry_point="bench_model:answer"
            )

        for _ in range(settings.repeat):
            launcher = SandboxLauncher(startup_timeout=30.0)  # a new zygote each repeat
            try:
                sandboxed = starter(launcher)
                first.add(_cold_ms(sandboxed, payload, 1))
                cold.add(_cold_ms(sandboxed, payload, starts))
                fresh_cold.add(_cold_ms(starter(fresh), payload, starts))
                plain_cold.add(_cold_ms(lambda: _PlainWorker(package), payload, starts))
                runs: list[tuple[Figure, Callable[[], Any]]] = [
                    (warm, sandboxed),
                    (plain_warm, lambda: _PlainWorker(package)),
                ]
                for figure, start in runs:
                    worker = start()
                    try:
                        call = functools.partial(worker.call, payload, timeout=10)
                        per_call = seconds_per_call(call, settings.micro_seconds)
                    finally:
                        worker.kill()
                    figure.add(per_call * 1e6)
            finally:
                launcher.close()
    finally:
        shutil.rmtree(package, ignore_errors=True)
    return [cold, fresh_cold, plain_cold, first, warm, plain_warm]


def _cold_ms(start: Any, payload: dict[str, Any], count: int) -> float:
    """Mean ms from spawning a worker to its first answer."""
    total = 0.0
    for _ in range(count):
        t0 = time.perf_counter()
        worker = start()
        try:
            reply = worker.call(payload, timeout=30)
            total += time.perf_counter() - t0
        finally:
            worker.kill()
        if reply != {"echo": payload}:
            raise RuntimeError("a worker answered wrongly")
    return total / count * 1000


SECTION = Section(
    key="sandbox",
    title="sandbox vs plain subprocess worker",
    requires=("broker.runtimes.sandbox.launcher", "broker.runtimes.sandbox.probe"),
    run=run,
)

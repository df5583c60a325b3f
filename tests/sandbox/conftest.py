"""Fixtures for the sandbox tests: a launcher (or a skip/fail saying why not) and worker factory.

Sandbox tests need Linux namespaces, seccomp and Landlock. Where ``sandbox_support()`` reports a
gap they skip on a laptop and fail in CI (``tests.conftest.skip_or_fail``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker.runtimes.sandbox.launcher import SandboxLauncher, Worker
from broker.runtimes.sandbox.probe import sandbox_support
from sandbox.protocol import WorkerLimits
from tests.conftest import skip_or_fail
from tests.integration.harness import backend  # noqa: F401 - the fake OIP backend fixture

ESCAPE_PACKAGE = Path(__file__).parent / "escape_pkg"

# Small limits so each limit test is quick; the memory cap leaves the interpreter ~200 MiB.
TEST_LIMITS = WorkerLimits(
    memory_bytes=256 * 1024 * 1024,
    cpu_seconds=1,
    processes=16,
    open_files=64,
    file_size_bytes=32 * 1024 * 1024,
    scratch_bytes=8 * 1024 * 1024,
    max_frame_bytes=1024 * 1024,
)

StartWorker = Callable[..., Worker]


@pytest.fixture(scope="session")
def launcher() -> SandboxLauncher:
    """A launcher, once the probe has shown that this host can build the sandbox."""
    missing = sandbox_support()
    if missing:
        skip_or_fail("sandbox unavailable: " + "; ".join(missing))
    return SandboxLauncher()


@pytest.fixture
def start_worker(launcher: SandboxLauncher) -> Iterator[StartWorker]:
    """Start escape-battery workers (``limits`` and ``tenant`` overridable); all killed after."""
    workers: list[Worker] = []

    def start(limits: WorkerLimits = TEST_LIMITS, tenant: str = "tenant-a") -> Worker:
        worker = launcher.start(ESCAPE_PACKAGE, limits=limits, tenant=tenant)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.kill()


@pytest.fixture
def worker(start_worker: StartWorker) -> Worker:
    """One escape-battery worker with the test limits."""
    return start_worker()

"""Streamed calls through the worker pools: one tenant per worker, retirement, cancellation."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker.errors import Cancelled
from broker.packages.environment import Environments
from broker.packages.store import PackageStore, StoredPackage
from broker.runtimes.sandbox.errors import SandboxTimeout
from broker.runtimes.sandbox.launcher import SandboxLauncher
from broker.runtimes.sandbox.pool import WorkerPools

pytestmark = pytest.mark.sandbox

STREAM_PACKAGE = Path(__file__).parent / "stream_pkg"


@pytest.fixture
def package(tmp_path: Path, launcher: SandboxLauncher) -> StoredPackage:
    return PackageStore(tmp_path).add(STREAM_PACKAGE)


@pytest.fixture
def pools(tmp_path: Path, package: StoredPackage) -> Iterator[WorkerPools]:
    pools = WorkerPools(PackageStore(tmp_path), Environments(tmp_path / "envs"))
    yield pools
    pools.close()


def test_a_complete_stream_gives_the_worker_back_warm(
    pools: WorkerPools, package: StoredPackage
) -> None:
    payload = {"mode": "chunks", "count": 2, "secret": "first"}
    with pools.streaming(package.digest, "tenant-a", payload, timeout=10) as chunks:
        assert list(chunks) == [{"n": 0}, {"n": 1}]
    history = pools.call(package.digest, "tenant-a", {"mode": "history"}, timeout=10)
    assert history["seen"] == ["first"]  # the same worker served the next call


def test_leaving_a_stream_early_retires_its_worker(
    pools: WorkerPools, package: StoredPackage
) -> None:
    payload = {"mode": "hang", "count": 1, "secret": "abandoned"}
    with pools.streaming(package.digest, "tenant-a", payload, timeout=30) as chunks:
        [worker] = pools.workers(package.digest, "tenant-a")
        assert next(chunks) == {"n": 0}
    assert not worker.alive
    assert pools.workers(package.digest, "tenant-a") == []
    # The next call gets a fresh worker, which never saw the abandoned call.
    history = pools.call(package.digest, "tenant-a", {"mode": "history"}, timeout=10)
    assert history["seen"] == []


def test_a_tenants_stream_never_reaches_another_tenants_worker(
    pools: WorkerPools, package: StoredPackage
) -> None:
    payload = {"mode": "chunks", "count": 2, "secret": "tenant-a-only"}
    with pools.streaming(package.digest, "tenant-a", payload, timeout=10) as chunks:
        assert len(list(chunks)) == 2
    seen_by_b = pools.call(package.digest, "tenant-b", {"mode": "history"}, timeout=10)
    assert seen_by_b["seen"] == []
    workers_a = {w.pid for w in pools.workers(package.digest, "tenant-a")}
    workers_b = {w.pid for w in pools.workers(package.digest, "tenant-b")}
    assert workers_a
    assert workers_b
    assert not workers_a & workers_b


def test_the_deadline_mid_stream_retires_the_worker(
    pools: WorkerPools, package: StoredPackage
) -> None:
    got = []
    with (
        pytest.raises(SandboxTimeout),
        pools.streaming(
            package.digest, "tenant-a", {"mode": "hang", "count": 1}, timeout=3
        ) as chunks,
    ):
        got.extend(chunks)
    assert got == [{"n": 0}]
    assert pools.workers(package.digest, "tenant-a") == []


def test_cancelling_mid_stream_stops_the_worker(pools: WorkerPools, package: StoredPackage) -> None:
    cancellers: list[Callable[[], None]] = []
    with (
        pytest.raises(Cancelled),
        pools.streaming(
            package.digest,
            "tenant-a",
            {"mode": "hang", "count": 1},
            timeout=60,
            on_cancel=cancellers.append,
        ) as chunks,
    ):
        assert next(chunks) == {"n": 0}
        [worker] = pools.workers(package.digest, "tenant-a")
        cancellers[0]()  # the buyer went away: the canceller kills the worker, the read ends
        next(chunks)
    assert not worker.alive
    assert pools.workers(package.digest, "tenant-a") == []

"""Worker pools: one tenant per worker, recycling, deadlines, limits, idle sweep, close."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from broker.errors import DeadlineExceeded, Unavailable
from broker.packages.environment import Environments
from broker.packages.errors import PackageTampered
from broker.packages.store import PackageStore, StoredPackage
from broker.runtimes.base import call_cpu_us
from broker.runtimes.sandbox.errors import (
    SandboxLimitExceeded,
    SandboxModelError,
    SandboxTimeout,
)
from broker.runtimes.sandbox.launcher import SandboxLauncher
from broker.runtimes.sandbox.pool import PoolSettings, WorkerPools

pytestmark = pytest.mark.sandbox

POOL_PACKAGE = Path(__file__).parent / "pool_pkg"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def package(tmp_path: Path, launcher: SandboxLauncher) -> StoredPackage:
    return PackageStore(tmp_path).add(POOL_PACKAGE)


def _pools(tmp_path: Path, **settings: object) -> WorkerPools:
    return WorkerPools(
        PackageStore(tmp_path),
        Environments(tmp_path / "envs"),
        settings=PoolSettings(**settings),  # type: ignore[arg-type]
    )


@pytest.fixture
def pools(tmp_path: Path, package: StoredPackage) -> Iterator[WorkerPools]:
    pools = _pools(tmp_path, max_calls_per_worker=3)
    yield pools
    pools.close()


def test_a_warm_worker_serves_the_same_tenant_again(
    pools: WorkerPools, package: StoredPackage
) -> None:
    first = pools.call(package.digest, "tenant-a", {}, timeout=10)
    second = pools.call(package.digest, "tenant-a", {}, timeout=10)
    assert second["boot_id"] == first["boot_id"]
    assert second["calls"] == 2


def test_tenants_never_share_a_worker_or_its_scratch(
    pools: WorkerPools, package: StoredPackage
) -> None:
    a = pools.call(package.digest, "tenant-a", {"do": "leave", "name": "a.txt"}, timeout=10)
    b = pools.call(package.digest, "tenant-b", {"do": "look"}, timeout=10)
    assert b["boot_id"] != a["boot_id"]
    assert b["scratch"] == []
    assert pools.call(package.digest, "tenant-a", {"do": "look"}, timeout=10)["scratch"] == [
        "a.txt"
    ]


def test_a_worker_is_recycled_after_n_calls_with_a_fresh_scratch(
    pools: WorkerPools, package: StoredPackage
) -> None:
    first = pools.call(package.digest, "t", {"do": "leave", "name": "old"}, timeout=10)
    for _ in range(2):
        assert pools.call(package.digest, "t", {}, timeout=10)["boot_id"] == first["boot_id"]
    fourth = pools.call(package.digest, "t", {"do": "look"}, timeout=10)
    assert fourth["boot_id"] != first["boot_id"]
    assert fourth["scratch"] == []


def test_the_deadline_kills_a_stuck_worker(pools: WorkerPools, package: StoredPackage) -> None:
    stuck = pools.call(package.digest, "t", {}, timeout=10)
    with pytest.raises(SandboxTimeout):
        pools.call(package.digest, "t", {"do": "sleep", "seconds": 30}, timeout=0.5)
    assert pools.workers(package.digest, "t") == []
    assert pools.call(package.digest, "t", {}, timeout=10)["boot_id"] != stuck["boot_id"]


def test_memory_limit_names_the_limit_and_replaces_the_worker(
    pools: WorkerPools, package: StoredPackage
) -> None:
    before = pools.call(package.digest, "t", {}, timeout=10)
    with capture_logs() as logs, pytest.raises(SandboxLimitExceeded) as info:
        pools.call(package.digest, "t", {"do": "allocate", "bytes": 512 * 2**20}, timeout=10)
    assert info.value.limit == "memory"
    assert any(e["event"] == "sandbox_violation" and e["tenant"] == "t" for e in logs)
    assert pools.call(package.digest, "t", {}, timeout=10)["boot_id"] != before["boot_id"]


def test_cpu_budget_is_per_call(pools: WorkerPools, package: StoredPackage) -> None:
    # 1 CPU second per call (manifest): two calls of 0.6 s pass, one of 5 s is stopped.
    pools.call(package.digest, "t", {"do": "spin", "seconds": 0.6}, timeout=30)
    pools.call(package.digest, "t", {"do": "spin", "seconds": 0.6}, timeout=30)
    with pytest.raises(SandboxLimitExceeded) as info:
        pools.call(package.digest, "t", {"do": "spin", "seconds": 5}, timeout=60)
    assert info.value.limit == "cpu"
    assert pools.call(package.digest, "t", {}, timeout=10)["calls"] == 1


def test_a_model_error_keeps_the_worker(pools: WorkerPools, package: StoredPackage) -> None:
    first = pools.call(package.digest, "t", {}, timeout=10)
    with pytest.raises(SandboxModelError):
        pools.call(package.digest, "t", {"do": "fail"}, timeout=10)
    assert pools.call(package.digest, "t", {}, timeout=10)["boot_id"] == first["boot_id"]


def test_idle_workers_are_swept(tmp_path: Path, package: StoredPackage) -> None:
    clock = FakeClock()
    pools = WorkerPools(
        PackageStore(tmp_path),
        Environments(tmp_path / "envs"),
        settings=PoolSettings(idle_seconds=60),
        clock=clock,
    )
    try:
        first = pools.call(package.digest, "t", {}, timeout=10)
        clock.now += 59
        assert pools.sweep() == 0
        clock.now += 2
        assert pools.sweep() == 1
        assert pools.call(package.digest, "t", {}, timeout=10)["boot_id"] != first["boot_id"]
    finally:
        pools.close()


def test_concurrency_caps_workers_per_tenant(pools: WorkerPools, package: StoredPackage) -> None:
    errors: list[BaseException] = []

    def slow() -> None:
        try:
            pools.call(package.digest, "t", {"do": "sleep", "seconds": 1.5}, timeout=10)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=slow) for _ in range(2)]
    for thread in threads:
        thread.start()
    while len(pools.workers(package.digest, "t")) < 2:
        threading.Event().wait(0.02)
    with pytest.raises(DeadlineExceeded, match="busy"):
        pools.call(package.digest, "t", {}, timeout=0.3)  # manifest concurrency is 2
    for thread in threads:
        thread.join()
    assert errors == []


def test_worker_output_is_logged_per_tenant_when_it_retires(
    pools: WorkerPools, package: StoredPackage
) -> None:
    with capture_logs() as logs:
        pools.call(
            package.digest, "tenant-a", {"do": "print", "text": "vendor says hi"}, timeout=10
        )
        pools.call(package.digest, "tenant-b", {}, timeout=10)
        pools.close()
    outputs = [e for e in logs if e["event"] == "sandbox_worker_output"]
    assert [(e["tenant"], e["output"].strip()) for e in outputs] == [("tenant-a", "vendor says hi")]
    assert outputs[0]["package"] == package.digest


def test_cancel_kills_the_worker(pools: WorkerPools, package: StoredPackage) -> None:
    cancellers: list[object] = []

    def register(cancel: object) -> None:
        cancellers.append(cancel)
        threading.Timer(0.3, cancel).start()  # type: ignore[arg-type]

    with pytest.raises(Exception, match="cancel"):
        pools.call(
            package.digest, "t", {"do": "sleep", "seconds": 30}, timeout=10, on_cancel=register
        )
    assert pools.workers(package.digest, "t") == []


def test_a_canceller_run_after_its_call_ended_leaves_the_worker_alone(
    pools: WorkerPools, package: StoredPackage
) -> None:
    """Regression (found by the soak): grpcio runs every RPC's termination callbacks after the
    answer is sent; the finished call's canceller used to kill the worker, by then idle or busy
    with the next call, which then failed as 'the model's worker crashed'."""
    cancellers: list[Callable[[], None]] = []
    first = pools.call(package.digest, "t", {}, timeout=10, on_cancel=cancellers.append)
    cancellers[0]()  # the first RPC terminates now, its call long over
    [worker] = pools.workers(package.digest, "t")
    assert worker.alive
    second = pools.call(package.digest, "t", {}, timeout=10, on_cancel=cancellers.append)
    assert second["boot_id"] == first["boot_id"] and second["calls"] == 2


def test_closed_pools_refuse_calls(pools: WorkerPools, package: StoredPackage) -> None:
    pools.call(package.digest, "t", {}, timeout=10)
    pools.close()
    assert pools.workers(package.digest, "t") == []
    with pytest.raises(Unavailable):
        pools.call(package.digest, "t", {}, timeout=10)


def test_a_tampered_package_is_refused_at_the_next_worker_start(
    pools: WorkerPools, package: StoredPackage
) -> None:
    pools.call(package.digest, "t", {}, timeout=10)
    (package.path / "pool_model.py").write_text("def answer(p):\n    return {'evil': True}\n")
    with pytest.raises(PackageTampered):
        pools.call(package.digest, "other-tenant", {}, timeout=10)


def test_a_calls_cpu_time_is_measured_for_its_bill(
    pools: WorkerPools, package: StoredPackage
) -> None:
    call_cpu_us.set(0)
    pools.call(package.digest, "t", {"do": "spin", "seconds": 0.3}, timeout=30)
    spun = call_cpu_us.get()
    assert spun >= 290_000  # 0.3 CPU seconds, at the kernel's clock-tick precision (10 ms)
    call_cpu_us.set(0)
    pools.call(package.digest, "t", {}, timeout=10)  # the same worker, a call that does nothing
    assert call_cpu_us.get() < spun

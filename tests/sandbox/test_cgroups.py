"""Per-worker cgroups: detection (v2, v1, none), limits, joining before the spec, OOM, removal.

Tests taking the ``real`` fixture create cgroups on this host and skip where it may not (a non-root
CI runner without a delegated cgroup v2 subtree); the cgroup v2 layout is also exercised on a
fake tree of plain files, because a host offers either v1 or v2 memory, never both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from broker.packages.environment import Environments
from broker.packages.store import PackageStore, StoredPackage
from broker.runtimes.sandbox.cgroups import (
    Cgroups,
    WorkerGroup,
    default_cgroups,
    memory_limit,
    pids_limit,
)
from broker.runtimes.sandbox.errors import SandboxLimitExceeded
from broker.runtimes.sandbox.launcher import SandboxLauncher
from broker.runtimes.sandbox.pool import PoolSettings, WorkerPools
from broker.runtimes.sandbox.probe import cgroup_status
from sandbox.protocol import WorkerLimits
from tests.sandbox.conftest import TEST_LIMITS

TREE_PACKAGE = Path(__file__).parent / "tree_pkg"
CTRL = ("memory", "pids")
SMALL = WorkerLimits(memory_bytes=48 * 1024 * 1024, processes=4, scratch_bytes=1024 * 1024)


# --- detection on fake trees ---------------------------------------------------------------------


def _fake_host(tmp_path: Path, *, v2_controllers: str, v1: tuple[str, ...] = ()) -> Path:
    """A /proc/self with cgroup and mountinfo files pointing at plain directories."""
    proc = tmp_path / "proc"
    proc.mkdir()
    unified = tmp_path / "unified"
    own = unified / "system.slice" / "broker.service"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text(v2_controllers + "\n")
    (own / "cgroup.subtree_control").write_text("\n")
    (own / "cgroup.procs").write_text(f"{os.getpid()}\n")
    memberships = ["0::/system.slice/broker.service"]
    mounts = [f"41 31 0:38 / {unified} rw,relatime - cgroup2 cgroup2 rw"]
    for n, name in enumerate(v1, start=1):
        hierarchy = tmp_path / name
        (hierarchy / "box").mkdir(parents=True)
        memberships.append(f"{n}:{name}:/box")
        mounts.append(f"{50 + n} 31 0:{50 + n} / {hierarchy} rw - cgroup cgroup rw,{name}")
    (proc / "cgroup").write_text("\n".join(memberships) + "\n")
    (proc / "mountinfo").write_text("\n".join(mounts) + "\n")
    return proc


def test_v2_with_delegated_controllers_limits_each_worker(tmp_path: Path) -> None:
    cgroups = Cgroups.detect(_fake_host(tmp_path, v2_controllers="cpu memory pids"))
    assert cgroups.status.controllers == {"memory": "v2", "pids": "v2"}
    assert cgroups.status.complete
    own = tmp_path / "unified" / "system.slice" / "broker.service"
    assert set((own / "cgroup.subtree_control").read_text().split()) == {"+memory", "+pids"}
    group = cgroups.create("worker-42", TEST_LIMITS)
    assert group is not None
    path = own / "model-broker" / "worker-42"
    assert group.paths == (path,)
    assert (path / "memory.max").read_text() == str(memory_limit(TEST_LIMITS))
    assert (path / "memory.oom.group").read_text() == "1"
    assert (path / "pids.max").read_text() == str(TEST_LIMITS.processes + 1)
    group.join(4242)
    assert (path / "cgroup.procs").read_text() == "4242"
    assert not group.oom_killed()
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert group.oom_killed()


def test_a_group_emptied_or_removed_under_its_worker_is_no_longer_intact(tmp_path: Path) -> None:
    """Regression (the fault battery): a worker whose cgroup was removed kept serving calls
    with no cgroup limit; the pool now asks ``intact()`` around every call."""
    cgroups = Cgroups.detect(_fake_host(tmp_path, v2_controllers="cpu memory pids"))
    group = cgroups.create("worker-43", TEST_LIMITS)
    assert group is not None
    group.join(4343)
    assert group.intact()
    [path] = group.paths
    (path / "cgroup.procs").write_text("")  # its processes moved out
    assert not group.intact()
    (path / "cgroup.procs").write_text("4343")
    assert group.intact()
    for child in path.iterdir():  # and the directory removed
        child.unlink()
    path.rmdir()
    assert not group.intact()


def test_v2_without_the_controllers_falls_back_to_v1(tmp_path: Path) -> None:
    proc = _fake_host(tmp_path, v2_controllers="hugetlb", v1=("memory", "pids"))
    cgroups = Cgroups.detect(proc)
    assert cgroups.status.controllers == {"memory": "v1", "pids": "v1"}
    group = cgroups.create("worker-7", SMALL)
    assert group is not None
    memory, pids = (tmp_path / name / "box" / "model-broker" / "worker-7" for name in CTRL)
    assert group.paths == (memory, pids)
    assert (memory / "memory.limit_in_bytes").read_text() == str(memory_limit(SMALL))
    assert (pids / "pids.max").read_text() == str(pids_limit(SMALL))
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert group.oom_killed()


def test_groups_of_dead_workers_are_swept_at_start_and_live_ones_kept(tmp_path: Path) -> None:
    proc = _fake_host(tmp_path, v2_controllers="", v1=("pids",))
    base = tmp_path / "pids" / "box" / "model-broker"
    dead = subprocess.Popen(["true"])
    dead.wait()
    (base / f"worker-{dead.pid}").mkdir(parents=True)
    (base / f"worker-{os.getpid()}").mkdir()
    (base / "not-a-worker").mkdir()
    Cgroups.detect(proc)
    assert sorted(p.name for p in base.iterdir()) == ["not-a-worker", f"worker-{os.getpid()}"]


def test_no_cgroups_warns_once_naming_what_is_missing(tmp_path: Path) -> None:
    proc = _fake_host(tmp_path, v2_controllers="cpu", v1=("pids",))
    with capture_logs() as logs:
        cgroups = Cgroups.detect(proc)
    assert cgroups.status.controllers == {"pids": "v1"}
    assert list(cgroups.status.missing) == ["memory"]
    assert "falling back to per-process rlimits" in cgroups.status.describe()
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == ["sandbox_cgroups_missing"]
    assert list(warnings[0]["missing"]) == ["memory"]
    assert "rlimits" in warnings[0]["fallback"]


def test_a_cgroup_shared_with_other_processes_is_left_alone(tmp_path: Path) -> None:
    proc = _fake_host(tmp_path, v2_controllers="memory pids")
    own = tmp_path / "unified" / "system.slice" / "broker.service"
    (own / "cgroup.procs").write_text(f"{os.getpid()}\n1\n")
    # Plain files accept any write; make enabling controllers fail as the kernel does (EBUSY
    # for a cgroup with processes) by turning the file into a directory.
    (own / "cgroup.subtree_control").unlink()
    (own / "cgroup.subtree_control").mkdir()
    cgroups = Cgroups.detect(proc)
    assert set(cgroups.status.missing) == {"memory", "pids"}
    assert cgroups.create("worker-1", SMALL) is None


def test_unreadable_proc_disables_cgroups(tmp_path: Path) -> None:
    cgroups = Cgroups.detect(tmp_path / "nowhere")
    assert not cgroups.status.controllers
    assert cgroups.create("worker-1", SMALL) is None


# --- real cgroups on this host -------------------------------------------------------------------


@pytest.fixture(scope="module")
def real() -> Cgroups:
    cgroups = default_cgroups()
    if not cgroups.status.complete:
        pytest.skip(f"this host gives the broker no cgroups: {cgroups.status.describe()}")
    return cgroups


def _held_child(code: str) -> subprocess.Popen[bytes]:
    """A child that waits for a line on stdin before it runs ``code`` (so it can join first)."""
    return subprocess.Popen(
        [sys.executable, "-c", f"import sys; sys.stdin.readline()\n{code}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )


def _run_in(group: WorkerGroup, code: str) -> tuple[int, bytes]:
    child = _held_child(code)
    group.join(child.pid)
    out, _ = child.communicate(b"go\n", timeout=60)
    return child.returncode, out


def test_real_memory_limit_oom_kills_and_is_recognised(real: Cgroups) -> None:
    group = real.create(f"test-{os.getpid()}-oom", SMALL)
    assert group is not None
    try:
        code, _ = _run_in(group, "hog = b'x' * (200 * 1024 * 1024)")
        assert code == -signal.SIGKILL
        assert group.oom_killed()
    finally:
        assert group.remove()
    assert not any(path.exists() for path in group.paths)


def test_real_pids_limit_stops_a_fork_bomb(real: Cgroups) -> None:
    group = real.create(f"test-{os.getpid()}-pids", SMALL)
    assert group is not None
    bomb = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    for _ in range(100):\n"
        "        if os.fork() == 0:\n"
        "            os.close(1); time.sleep(30); os._exit(0)\n"
        "        n += 1\n"
        "except BlockingIOError:\n"
        "    pass\n"
        "print(n, flush=True)\n"
    )
    try:
        code, out = _run_in(group, bomb)
        assert code == 0
        assert int(out) == pids_limit(SMALL) - 1  # the bomb itself is one of the tasks
        assert not group.oom_killed()
    finally:
        for path in group.paths:  # the sleepers are ours: end them so the group can go
            for pid in (path / "cgroup.procs").read_text().split():
                os.kill(int(pid), signal.SIGKILL)
        assert group.remove()


def test_the_probe_reports_the_status(real: Cgroups) -> None:
    assert cgroup_status() == real.status


@pytest.mark.sandbox
def test_a_worker_joins_its_group_before_it_runs_and_leaves_none_behind(
    real: Cgroups, launcher: SandboxLauncher
) -> None:
    worker = launcher.start(TREE_PACKAGE, limits=TEST_LIMITS, tenant="tenant-a")
    try:
        worker.call({"do": "fork_hold", "count": 3}, timeout=30)
        groups = _worker_groups(worker.pid)
        hierarchies = {f"{v}:{c}" if v == "v1" else v for c, v in real.status.controllers.items()}
        assert len(groups) == len(hierarchies)
        for group in groups:
            members = {int(p) for p in (group / "cgroup.procs").read_text().split()}
            # the reaper, the worker and its three children: the whole tree, nothing else
            assert worker.pid in members
            assert len(members) == 5
            if (group / "pids.max").exists():
                assert (group / "pids.max").read_text().strip() == str(pids_limit(TEST_LIMITS))
            if (group / "memory.limit_in_bytes").exists():
                limit = int((group / "memory.limit_in_bytes").read_text())
                assert limit == memory_limit(TEST_LIMITS) // 4096 * 4096
    finally:
        worker.kill()
    assert not any(group.exists() for group in groups)


def _worker_groups(pid: int) -> list[Path]:
    found = []
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if not path.endswith(f"/model-broker/worker-{pid}"):
            continue
        for name in controllers.split(",") if controllers else ["unified"]:
            root = Path("/sys/fs/cgroup") / name
            if root.exists():
                found.append(root / path.lstrip("/"))
    return found


@pytest.fixture
def tree_package(tmp_path: Path, launcher: SandboxLauncher) -> StoredPackage:
    return PackageStore(tmp_path).add(TREE_PACKAGE)


@pytest.fixture
def pools(tmp_path: Path, tree_package: StoredPackage) -> Iterator[WorkerPools]:
    pools = WorkerPools(
        PackageStore(tmp_path), Environments(tmp_path / "envs"), settings=PoolSettings()
    )
    yield pools
    pools.close()


@pytest.mark.sandbox
def test_a_process_tree_past_the_memory_limit_is_a_memory_limit_error(
    real: Cgroups, pools: WorkerPools, tree_package: StoredPackage
) -> None:
    # Each child stays below RLIMIT_AS (256 MiB); together they pass the group's 320 MiB.
    with capture_logs() as logs, pytest.raises(SandboxLimitExceeded) as caught:
        pools.call(
            tree_package.digest,
            "tenant-a",
            {"do": "hog_tree", "children": 3, "mib": 150},
            timeout=60,
        )
    assert caught.value.limit == "memory"
    assert pools.workers(tree_package.digest, "tenant-a") == []
    violations = [e for e in logs if e["event"] == "sandbox_violation"]
    assert [e["reason"] for e in violations] == ["limit memory"]
    # The next call gets a fresh worker, unharmed.
    assert pools.call(tree_package.digest, "tenant-a", {}, timeout=30)["uid"] > 0

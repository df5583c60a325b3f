"""A host uid per live worker (root broker): never 0, never shared, reused only after release.

The allocator is tested on its own with a private lock directory; the sandbox tests start real
workers as root (they skip otherwise: a non-root broker's workers keep its uid) and read the
workers' host ``/proc/<pid>/status``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from broker.runtimes.sandbox.errors import SandboxUnavailable
from broker.runtimes.sandbox.launcher import SandboxLauncher, Worker
from broker.runtimes.sandbox.uids import WorkerIds, WorkerIdsExhausted
from tests.sandbox.conftest import TEST_LIMITS

pytestmark = pytest.mark.sandbox

TREE_PACKAGE = Path(__file__).parent / "tree_pkg"
# Far from the default range, so these tests never wait for another broker's workers.
TEST_BASE = 3_100_000


# --- the allocator ---------------------------------------------------------------------------


def test_ids_are_distinct_until_exhausted_then_refused(tmp_path: Path) -> None:
    ids = WorkerIds(TEST_BASE, 3, lock_dir=tmp_path / "locks")
    taken = [ids.acquire() for _ in range(3)]
    assert sorted(taken) == [TEST_BASE, TEST_BASE + 1, TEST_BASE + 2]
    with pytest.raises(WorkerIdsExhausted) as caught:
        ids.acquire()
    assert caught.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "worker_uid_count" in (caught.value.log_reason or "")


def test_an_id_is_reused_only_after_release_and_last(tmp_path: Path) -> None:
    ids = WorkerIds(TEST_BASE, 3, lock_dir=tmp_path / "locks")
    first = ids.acquire()
    ids.release(first)
    second, third = ids.acquire(), ids.acquire()
    assert first not in (second, third)  # round-robin: a released id is the last choice
    fourth = ids.acquire()
    assert fourth == first
    with pytest.raises(WorkerIdsExhausted):
        ids.acquire()
    ids.release(third)
    ids.release(third)  # idempotent
    assert ids.acquire() == third


def test_zero_is_never_an_id() -> None:
    with pytest.raises(ValueError, match="root"):
        WorkerIds(0, 10)
    with pytest.raises(ValueError, match="range"):
        WorkerIds(2**32 - 3, 10)


def test_another_process_holding_an_id_keeps_it(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path\n"
            "from broker.runtimes.sandbox.uids import WorkerIds\n"
            f"ids = WorkerIds({TEST_BASE}, 2, lock_dir=Path({str(locks)!r}))\n"
            "print(ids.acquire(), flush=True); sys.stdin.readline()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    assert holder.stdout is not None
    assert holder.stdin is not None
    try:
        theirs = int(holder.stdout.readline())
        ids = WorkerIds(TEST_BASE, 2, lock_dir=locks)
        ours = ids.acquire()
        assert ours != theirs
        with pytest.raises(WorkerIdsExhausted):
            ids.acquire()
    finally:
        holder.stdin.close()
        holder.wait(30)
        holder.stdout.close()
    assert ids.acquire() == theirs  # the kernel dropped its lock with the process


def test_a_lock_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    locks.mkdir()
    locks.chmod(0o777)
    with pytest.raises(SandboxUnavailable, match="no one else can write"):
        WorkerIds(TEST_BASE, 2, lock_dir=locks).acquire()


def test_a_lock_directory_that_cannot_exist_says_which_setting_to_change(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SandboxUnavailable, match="worker_uid_lock_dir"):
        WorkerIds(TEST_BASE, 2, lock_dir=tmp_path / "file" / "locks").acquire()


# --- real workers (root broker) ----------------------------------------------------------------


@pytest.fixture
def uid_launcher(launcher: SandboxLauncher, tmp_path: Path) -> SandboxLauncher:
    """A launcher over two ids of a private range (``launcher`` first: the probe must pass)."""
    if os.geteuid() != 0:
        pytest.skip("a non-root broker's workers keep its own uid; nothing is allocated")
    return SandboxLauncher(worker_ids=WorkerIds(TEST_BASE, 2), zygote=False)


@pytest.fixture
def started(uid_launcher: SandboxLauncher) -> Iterator[list[Worker]]:
    workers: list[Worker] = []
    yield workers
    for worker in workers:
        worker.kill()


def _start(launcher: SandboxLauncher, started: list[Worker], tenant: str) -> Worker:
    worker = launcher.start(TREE_PACKAGE, limits=TEST_LIMITS, tenant=tenant)
    started.append(worker)
    return worker


def _host_ids(reaper: int) -> tuple[list[int], list[int]]:
    """Uid and gid lines of the worker's host status: the reaper's child, PID 1 inside."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = dict(
                line.split(":\t", 1) for line in (entry / "status").read_text().splitlines()
            )
        except (OSError, ValueError):
            continue
        if int(status.get("PPid", "0")) == reaper:
            return [int(x) for x in status["Uid"].split()], [int(x) for x in status["Gid"].split()]
    raise AssertionError(f"no worker under reaper {reaper}")


def test_live_workers_of_two_tenants_have_their_own_host_uids(
    uid_launcher: SandboxLauncher, started: list[Worker]
) -> None:
    a = _start(uid_launcher, started, "tenant-a")
    b = _start(uid_launcher, started, "tenant-b")
    (uid_a, gid_a), (uid_b, gid_b) = _host_ids(a.pid), _host_ids(b.pid)
    assert len(set(uid_a)) == 1 and len(set(uid_b)) == 1  # real, effective, saved, fs
    assert uid_a[0] != uid_b[0]
    assert {uid_a[0], uid_b[0]} == {TEST_BASE, TEST_BASE + 1}
    assert gid_a == uid_a and gid_b == uid_b
    assert a.call({}, timeout=30)["uid"] == uid_a[0]  # the identity map inside


def test_a_fork_bomb_in_one_tenant_leaves_another_free_to_start_and_fork(
    uid_launcher: SandboxLauncher, started: list[Worker]
) -> None:
    bomber = _start(uid_launcher, started, "tenant-a")
    bomb = bomber.call({"do": "fork_hold", "count": 500}, timeout=30)
    assert bomb["error"] == "EAGAIN"
    assert bomb["held"] < TEST_LIMITS.processes  # its children live on, holding its budget
    other = _start(uid_launcher, started, "tenant-b")
    assert other.call({"do": "fork_some", "count": 8}, timeout=30) == {"forked": 8}


def test_the_range_exhausted_refuses_a_start_until_a_worker_is_reaped(
    uid_launcher: SandboxLauncher, started: list[Worker]
) -> None:
    a = _start(uid_launcher, started, "tenant-a")
    _start(uid_launcher, started, "tenant-b")
    with pytest.raises(WorkerIdsExhausted):
        _start(uid_launcher, started, "tenant-c")
    freed = _host_ids(a.pid)[0][0]
    a.kill()
    c = _start(uid_launcher, started, "tenant-c")
    assert _host_ids(c.pid)[0][0] == freed

"""The zygote: workers forked from a pre-started interpreter, supervised although not our children.

The escape battery (``test_escapes.py``) runs through the default launcher, which uses the
zygote; these tests cover what the zygote adds: who forks whom, what the zygote holds, how exit
codes, kills and deaths cross it, and that ``zygote=False`` still works the same way.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from broker.runtimes.sandbox.errors import SandboxCrashed, SandboxLimitExceeded, SandboxViolation
from broker.runtimes.sandbox.launcher import SandboxLauncher, Worker
from broker.runtimes.sandbox.zygote_client import Zygote, ZygoteGone
from tests.sandbox.conftest import ESCAPE_PACKAGE, TEST_LIMITS

pytestmark = pytest.mark.sandbox

REPO = Path(__file__).resolve().parents[2]
WAIT = 10.0  # an upper bound for things that take microseconds; never asserted on


def _start(launcher: SandboxLauncher) -> Worker:
    return launcher.start(ESCAPE_PACKAGE, limits=TEST_LIMITS, tenant="tenant-z")


def _echo(worker: Worker) -> dict[str, object]:
    return worker.call({"attempt": "echo"}, timeout=10)


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def _inside(worker: Worker) -> int:
    """Host pid of the worker proper (PID 1 of its namespace), the only child of its reaper."""
    (pid,) = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
    return int(pid)


def _watch(pids: list[int]) -> list[int]:
    """Pidfds of these processes, opened while they surely still run."""
    return [os.pidfd_open(pid) for pid in pids]


def _all_exit(fds: list[int]) -> bool:
    """Whether every watched process ends within ``WAIT``; closes the pidfds."""
    try:
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        pending = set(fds)
        deadline = time.monotonic() + WAIT
        while pending and (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                pending.discard(fd)
                poller.unregister(fd)
        return not pending
    finally:
        for fd in fds:
            os.close(fd)


def _eventually(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def own_launcher(launcher: SandboxLauncher) -> Iterator[SandboxLauncher]:
    """A zygote launcher of this test's own (the session's one is shared), closed after."""
    own = SandboxLauncher()
    yield own
    own.close()


@pytest.fixture(params=["zygote", "fresh interpreter"])
def either_launcher(request: pytest.FixtureRequest, launcher: SandboxLauncher) -> SandboxLauncher:
    """The session's default (zygote) launcher, then one that spawns a fresh interpreter."""
    return launcher if request.param == "zygote" else SandboxLauncher(zygote=False)


# --- who starts whom ---------------------------------------------------------------------------


def test_the_default_launcher_forks_workers_from_its_zygote(launcher: SandboxLauncher) -> None:
    with _start(launcher) as worker:
        assert _echo(worker)["pid"] == 1
        assert launcher.zygote is not None
        assert launcher.zygote.pid is not None
        assert _ppid(worker.pid) == launcher.zygote.pid
        assert _ppid(launcher.zygote.pid) == os.getpid()


def test_without_the_zygote_the_worker_is_our_own_child() -> None:
    launcher = SandboxLauncher(zygote=False)
    assert launcher.zygote is None
    with _start(launcher) as worker:
        assert _echo(worker)["pid"] == 1
        assert _ppid(worker.pid) == os.getpid()


def test_concurrent_starts_through_one_zygote_each_get_their_own_worker(
    launcher: SandboxLauncher,
) -> None:
    workers: list[Worker] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def start_and_call() -> None:
        try:
            worker = _start(launcher)
            with lock:
                workers.append(worker)
            assert _echo(worker)["pid"] == 1
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=start_and_call) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert len({worker.pid for worker in workers}) == 6
    finally:
        for worker in workers:
            worker.kill()


# --- what the zygote holds, and what its children inherit --------------------------------------


def test_the_zygote_has_an_empty_environment_and_never_imports_vendor_code(
    launcher: SandboxLauncher,
) -> None:
    with _start(launcher) as worker:
        _echo(worker)  # the package is imported in the worker, after the fork
        assert launcher.zygote is not None
        zygote_pid = launcher.zygote.pid
        modules = launcher.zygote.modules()
    assert Path(f"/proc/{zygote_pid}/environ").read_bytes() == b""
    assert Path(f"/proc/{zygote_pid}/cmdline").read_bytes().split(b"\0")[1:4] == [
        b"-I",
        b"-S",
        b"-B",
    ]
    assert "sandbox.worker" in modules
    assert "escape_model" not in modules
    # Only the standard library, the sandbox's own modules and pyseccomp: none of the broker's
    # dependencies (it is not a fork of the broker), nothing of the broker itself (the inside
    # imports no ``broker`` module) and nothing from a package.
    foreign = [
        name
        for name in modules
        if name.split(".")[0] not in sys.stdlib_module_names
        and name not in ("__main__", "sandbox")
        and not name.startswith(("sandbox.", "pyseccomp"))
    ]
    assert foreign == []


def test_a_reaper_holds_none_of_the_zygotes_descriptors(launcher: SandboxLauncher) -> None:
    with _start(launcher) as first, _start(launcher) as second:
        for worker in (first, second):
            fds = Path(f"/proc/{worker.pid}/fd").iterdir()
            targets = sorted(str(fd.readlink()) for fd in fds)
            # stdin, the output pipe twice, and the pipe that tells the worker its reaper lives:
            # no control socket, no other worker's pidfd, no channel (the worker has that).
            assert [t.split(":")[0] for t in targets] == ["/dev/null", "pipe", "pipe", "pipe"]


# --- exit codes, kills and deaths across the zygote --------------------------------------------


def test_memory_limit_maps_through_either_launcher(either_launcher: SandboxLauncher) -> None:
    with _start(either_launcher) as worker, pytest.raises(SandboxLimitExceeded) as caught:
        worker.call({"attempt": "allocate", "mib": 512}, timeout=10)
    assert caught.value.limit == "memory"


def test_cpu_limit_maps_through_either_launcher(either_launcher: SandboxLauncher) -> None:
    with _start(either_launcher) as worker, pytest.raises(SandboxLimitExceeded) as caught:
        worker.call({"attempt": "spin"}, timeout=30)
    assert caught.value.limit == "cpu"


def test_seccomp_kill_maps_through_either_launcher(either_launcher: SandboxLauncher) -> None:
    init_module = 175
    with _start(either_launcher) as worker, pytest.raises(SandboxViolation) as caught:
        worker.call(
            {"attempt": "libc", "name": "syscall", "args": [init_module, 0, 0, ""]}, timeout=10
        )
    assert caught.value.exit_code == 128 + signal.SIGSYS
    assert not worker.alive


def test_killing_the_worker_kills_its_processes(either_launcher: SandboxLauncher) -> None:
    worker = _start(either_launcher)
    watched = _watch([worker.pid, _inside(worker)])
    worker.kill()
    assert not worker.alive
    assert _all_exit(watched)
    with pytest.raises(SandboxCrashed):
        _echo(worker)


def test_a_dead_zygote_takes_its_workers_along_and_the_next_start_restarts_it(
    own_launcher: SandboxLauncher,
) -> None:
    worker = _start(own_launcher)
    zygote = own_launcher.zygote
    assert zygote is not None
    first = zygote.pid
    assert first is not None
    watched = _watch([first, worker.pid, _inside(worker)])
    with capture_logs() as logs:
        os.kill(first, signal.SIGKILL)
        assert _all_exit(watched)
        assert _eventually(lambda: not worker.alive)
        with pytest.raises(SandboxCrashed):
            _echo(worker)
        worker.kill()
        with _start(own_launcher) as again:
            assert _echo(again)["pid"] == 1
            assert zygote.pid not in (None, first)
            assert _ppid(again.pid) == zygote.pid
    died = [e for e in logs if e["event"] == "sandbox_zygote_died"]
    assert [(e["pid"], e["exit_code"], e["workers_killed"]) for e in died] == [
        (first, -signal.SIGKILL, 1)
    ]
    assert [e["previous_pid"] for e in logs if e["event"] == "sandbox_zygote_restarting"] == [first]


def test_closing_the_launcher_stops_its_zygote_and_its_workers(
    own_launcher: SandboxLauncher,
) -> None:
    worker = _start(own_launcher)
    assert own_launcher.zygote is not None
    zygote_pid = own_launcher.zygote.pid
    assert zygote_pid is not None
    watched = _watch([zygote_pid, worker.pid, _inside(worker)])
    own_launcher.close()
    assert _all_exit(watched)
    assert _eventually(lambda: not worker.alive)
    worker.kill()
    with pytest.raises(SandboxCrashed):
        _start(own_launcher)


_BROKER = """
import sys, time
from pathlib import Path
from broker.runtimes.sandbox.launcher import SandboxLauncher
from tests.sandbox.conftest import ESCAPE_PACKAGE, TEST_LIMITS
launcher = SandboxLauncher()
worker = launcher.start(ESCAPE_PACKAGE, limits=TEST_LIMITS, tenant="t")
inside = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()[0]
print("pids", launcher.zygote.pid, worker.pid, inside, flush=True)
time.sleep(600)
"""


def test_the_zygote_and_its_workers_die_with_the_broker(launcher: SandboxLauncher) -> None:
    broker = subprocess.Popen(
        [sys.executable, "-c", _BROKER],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert broker.stdout is not None
        line = b""
        for line in broker.stdout:  # structlog's default output goes to stdout too
            if line.startswith(b"pids "):
                break
        pids = [int(pid) for pid in line.split()[1:]]
        assert len(pids) == 3, "the broker process did not start its worker"
        assert _ppid(pids[0]) == broker.pid
        watched = _watch(pids)
        broker.kill()
        assert _all_exit(watched)
    finally:
        broker.kill()
        broker.wait()
        if broker.stdout is not None:
            broker.stdout.close()


def test_a_zygote_that_cannot_start_fails_the_start_with_its_exit_code() -> None:
    broken = Zygote(lambda fd: [sys.executable, "-I", "-c", "raise SystemExit(3)"], timeout=WAIT)
    try:
        with pytest.raises(ZygoteGone, match="exited with code 3"):
            broken.spawn(0, 1)
    finally:
        broken.close()

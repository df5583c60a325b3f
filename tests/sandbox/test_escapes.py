"""The escape battery: each test makes the hostile model try one way out and checks it fails.

``sandbox/README.md`` cites these tests by name for each claim of the threat model.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from broker.runtimes.sandbox.errors import (
    SandboxLimitExceeded,
    SandboxModelError,
    SandboxTimeout,
    SandboxViolation,
)
from broker.runtimes.sandbox.launcher import Worker
from tests.sandbox.conftest import TEST_LIMITS, StartWorker

pytestmark = pytest.mark.sandbox

AF_VSOCK = 40
AF_NETLINK = 16
AF_PACKET = 17
DENIED = {"EPERM", "EACCES", "EROFS", "ENOENT"}


def attempt(worker: Worker, what: str, timeout: float = 10.0, **args: object) -> dict[str, object]:
    return worker.call({"attempt": what, **args}, timeout=timeout)


def assert_blocked(answer: dict[str, object], *errnos: str) -> None:
    assert answer["outcome"] == "blocked", answer
    if errnos:
        assert answer["errno"] in errnos, answer


# --- network -----------------------------------------------------------------------------------


def test_cannot_reach_a_broker_port_on_loopback(worker: Worker) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        answer = attempt(
            worker,
            "socket",
            family=socket.AF_INET,
            type=socket.SOCK_STREAM,
            host="127.0.0.1",
            port=port,
        )
        assert_blocked(answer, "EPERM")
        assert answer["stage"] == "socket"
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()


def test_cannot_create_a_socket_to_an_outside_address(worker: Worker) -> None:
    for family, host in ((socket.AF_INET, "10.255.255.1"), (socket.AF_INET6, "::1")):
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            answer = attempt(worker, "socket", family=family, type=kind, host=host, port=80)
            assert_blocked(answer, "EPERM")
            assert answer["stage"] == "socket"


def test_cannot_resolve_a_name(worker: Worker) -> None:
    assert_blocked(attempt(worker, "resolve", name="example.com"))


@pytest.mark.parametrize(
    ("family", "kind"),
    [(AF_NETLINK, socket.SOCK_RAW), (AF_VSOCK, socket.SOCK_STREAM), (AF_PACKET, socket.SOCK_RAW)],
    ids=["netlink", "vsock", "packet"],
)
def test_cannot_open_netlink_vsock_or_packet_sockets(
    worker: Worker, family: int, kind: int
) -> None:
    assert_blocked(attempt(worker, "socket", family=family, type=kind), "EPERM")


def test_only_loopback_exists(worker: Worker) -> None:
    assert attempt(worker, "echo")["interfaces"] == ["lo"]


# --- files -------------------------------------------------------------------------------------


def test_cannot_read_etc_shadow(worker: Worker) -> None:
    assert_blocked(attempt(worker, "read", path="/etc/shadow"), "ENOENT", "EACCES")


def test_cannot_read_broker_files_outside_the_package(worker: Worker, tmp_path: Path) -> None:
    for name in ("broker.db", "keyring.json"):
        secret = tmp_path / name
        secret.write_text("secret")
        secret.chmod(0o644)
        assert_blocked(attempt(worker, "read", path=str(secret)), "ENOENT", "EACCES")


def test_cannot_read_the_broker_environ(worker: Worker) -> None:
    answer = attempt(worker, "read", path=f"/proc/{os.getpid()}/environ")
    assert_blocked(answer, "ENOENT", "EACCES")


@pytest.mark.parametrize(
    "path",
    ["/evil", "/package/evil", "/package/escape_model.py", "/proc/evil", "/dev/evil", "/tmp/evil"],
)
def test_cannot_write_outside_scratch(worker: Worker, path: str) -> None:
    assert_blocked(attempt(worker, "write", path=path), *DENIED)


def test_can_write_in_scratch(worker: Worker) -> None:
    assert attempt(worker, "write", path="/scratch/ok")["outcome"] == "escaped"


def test_scratch_is_not_shared_between_workers(start_worker: StartWorker) -> None:
    first = start_worker(tenant="tenant-a")
    assert attempt(first, "write", path="/scratch/left-behind")["outcome"] == "escaped"
    concurrent = start_worker(tenant="tenant-b")
    assert attempt(concurrent, "exists", path="/scratch/left-behind") == {"exists": False}
    first.kill()
    assert attempt(start_worker(tenant="tenant-b"), "exists", path="/scratch/left-behind") == {
        "exists": False
    }


# --- processes and privileges ------------------------------------------------------------------


def test_cannot_see_or_signal_the_broker(worker: Worker) -> None:
    assert_blocked(attempt(worker, "kill", pid=os.getpid()), "ESRCH")


def test_cannot_ptrace_the_broker(worker: Worker) -> None:
    ptrace_attach = 16
    assert_blocked(
        attempt(worker, "libc", name="ptrace", args=[ptrace_attach, os.getpid(), 0, 0]), "EPERM"
    )


def test_cannot_mount(worker: Worker) -> None:
    answer = attempt(worker, "libc", name="mount", args=["none", "/scratch", "tmpfs", 0, 0])
    assert_blocked(answer, "EPERM")


@pytest.mark.parametrize("flag", [0x10000000, 0x00020000, 0x40000000, 0x20000000])
def test_cannot_unshare_again(worker: Worker, flag: int) -> None:
    assert_blocked(attempt(worker, "libc", name="unshare", args=[flag]), "EPERM")


@pytest.mark.parametrize("path", ["/bin/sh", sys.executable, os.path.realpath(sys.executable)])
def test_cannot_exec_a_binary(worker: Worker, path: str) -> None:
    assert_blocked(attempt(worker, "exec", path=path), "EPERM")


def test_io_uring_is_refused(worker: Worker) -> None:
    io_uring_setup = 425
    params = "\0" * 120
    assert_blocked(
        attempt(worker, "libc", name="syscall", args=[io_uring_setup, 1, params]), "EPERM"
    )


def test_forbidden_syscall_kills_the_worker(worker: Worker) -> None:
    init_module = 175
    with pytest.raises(SandboxViolation):
        attempt(worker, "libc", name="syscall", args=[init_module, 0, 0, ""])
    assert not worker.alive


def test_runs_unprivileged_with_no_capabilities(worker: Worker) -> None:
    status = attempt(worker, "echo")["status"]
    assert isinstance(status, dict)
    uids = {int(uid) for uid in status["Uid"].split()}
    assert len(uids) == 1 and 0 not in uids  # a host uid of its own: test_worker_uids.py
    for key in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        assert int(status[key], 16) == 0, (key, status[key])
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"


def test_fork_bomb_hits_the_process_limit(worker: Worker) -> None:
    answer = attempt(worker, "fork_bomb", count=500)
    assert_blocked(answer, "EAGAIN")
    assert isinstance(answer["forked"], int)
    assert answer["forked"] < TEST_LIMITS.processes


# --- resource limits ---------------------------------------------------------------------------


def test_memory_past_the_cap_is_a_limit_error(worker: Worker) -> None:
    with pytest.raises(SandboxLimitExceeded) as caught:
        attempt(worker, "allocate", mib=512)
    assert caught.value.limit == "memory"
    assert not worker.alive


def test_cpu_past_the_cap_is_a_limit_error(worker: Worker) -> None:
    with pytest.raises(SandboxLimitExceeded) as caught:
        attempt(worker, "spin", timeout=30)
    assert caught.value.limit == "cpu"


def test_deadline_kills_a_stuck_worker(worker: Worker) -> None:
    with pytest.raises(SandboxTimeout):
        attempt(worker, "sleep", seconds=60, timeout=0.5)
    assert not worker.alive


def test_cannot_write_past_the_scratch_cap(worker: Worker) -> None:
    answer = attempt(worker, "fill_scratch", bytes=64 * 1024 * 1024)
    assert_blocked(answer, "ENOSPC")
    assert isinstance(answer["written"], int)
    assert answer["written"] <= TEST_LIMITS.scratch_bytes


def test_cannot_write_a_file_past_the_size_limit(start_worker: StartWorker) -> None:
    limits = dataclasses.replace(TEST_LIMITS, file_size_bytes=2 * 1024 * 1024)
    answer = attempt(start_worker(limits=limits), "fill_scratch", bytes=64 * 1024 * 1024)
    assert_blocked(answer, "EFBIG")


def test_cannot_open_thousands_of_files(worker: Worker) -> None:
    answer = attempt(worker, "open_files", count=5000)
    assert_blocked(answer, "EMFILE")
    assert isinstance(answer["opened"], int)
    assert answer["opened"] < TEST_LIMITS.open_files


def test_a_one_gib_answer_is_refused(worker: Worker) -> None:
    with pytest.raises(SandboxLimitExceeded) as caught:
        attempt(worker, "big_answer", bytes=1 << 30)
    assert caught.value.limit in {"memory", "frame"}


def test_an_answer_past_the_frame_cap_is_refused(worker: Worker) -> None:
    with pytest.raises(SandboxLimitExceeded) as caught:
        attempt(worker, "big_answer", bytes=2 * TEST_LIMITS.max_frame_bytes)
    assert caught.value.limit == "frame"


def test_a_forged_one_gib_frame_header_is_refused_unread(worker: Worker) -> None:
    with pytest.raises(SandboxLimitExceeded) as caught:
        attempt(worker, "forge_frame")
    assert caught.value.limit == "frame"
    assert not worker.alive


# --- the normal path ---------------------------------------------------------------------------


def test_a_call_round_trips_in_a_clean_environment(worker: Worker) -> None:
    answer = attempt(worker, "echo", note="héllo", items=[1, 2.5, None, True])
    assert answer["echo"] == {"attempt": "echo", "note": "héllo", "items": [1, 2.5, None, True]}
    assert answer["env"] == {}
    assert answer["flags"] == {
        "isolated": 1,
        "ignore_environment": 1,
        "no_site": 1,
        "no_user_site": 1,
    }
    assert answer["pid"] == 1
    assert answer["hostname"] == "sandbox"
    assert answer["cwd"] == "/scratch"
    fds = answer["fds"]
    assert isinstance(fds, dict)
    # "?" is the directory descriptor that listed /proc/self/fd, already closed when read.
    open_fds = sorted(target.split(":")[0] for target in fds.values() if target != "?")
    assert open_fds == ["/dev/null", "pipe", "pipe", "socket"], fds
    assert fds["0"] == "/dev/null"


def test_a_model_error_is_reported_and_the_worker_survives(worker: Worker) -> None:
    with pytest.raises(SandboxModelError) as caught:
        attempt(worker, "raise")
    assert caught.value.kind == "ValueError"
    assert worker.alive
    assert attempt(worker, "exists", path="/package/manifest.json") == {"exists": True}


def test_x32_syscall_numbers_do_not_bypass_the_filter(worker: Worker) -> None:
    x32_socket = 0x40000000 + 41
    try:
        answer = attempt(worker, "libc", name="syscall", args=[x32_socket, socket.AF_INET, 1, 0])
    except SandboxViolation:
        return
    assert_blocked(answer)


def _sandboxed_pids(worker: Worker) -> list[int]:
    """Host pids of the worker (PID 1 of its namespace) and its children, seen from outside."""
    children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
    pids = [int(pid) for pid in children]
    for pid in list(pids):
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return pids


def test_killing_a_worker_leaves_no_process_behind(worker: Worker) -> None:
    inside = _sandboxed_pids(worker)
    assert len(inside) == 1
    with pytest.raises(SandboxTimeout):
        attempt(worker, "sleep", seconds=60, timeout=0.3)
    deadline = time.monotonic() + 2
    while any(Path(f"/proc/{pid}").exists() for pid in inside) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not [pid for pid in inside if Path(f"/proc/{pid}").exists()]

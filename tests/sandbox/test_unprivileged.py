"""The escape battery from a broker that is not root: the worker's own user namespace path.

CI runs as root, where workers switch to a host worker uid; a broker started by an ordinary user
takes another path (the worker maps itself into a new user namespace). This module runs
``unprivileged_driver.py`` as a dedicated unprivileged host user, with a clean environment and no
supplementary groups, under a world-executable ``python3.11`` (the venv's own interpreter lives
under ``/root``, mode 700; 3.11 extension modules are ABI-compatible across 3.11.x), with only
the ``broker`` and ``sandbox`` packages and the packages the launcher imports on ``PYTHONPATH``,
copied into a world-readable temporary directory with the test packages. The driver starts real
workers and reports each probe; each test below asserts on one.

Where the kernel refuses unprivileged user namespaces, or no such interpreter exists, these tests
skip with the reason (and fail in CI, ``tests.conftest.skip_or_fail``). When the tests themselves
run unprivileged, the rest of ``tests/sandbox`` already covers this path, so they skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.runtimes.sandbox.launcher import SandboxLauncher
from tests.conftest import skip_or_fail
from tests.sandbox.conftest import ESCAPE_PACKAGE, TEST_LIMITS
from tests.sandbox.unprivileged_driver import RESULT_PREFIX

pytestmark = pytest.mark.sandbox

UNPRIVILEGED_ID = 64_123  # used by nothing else here: RLIMIT_NPROC counts per host uid
REPO = Path(__file__).parents[2]
DRIVER = Path(__file__).with_name("unprivileged_driver.py")
ECHO_PACKAGE = Path(__file__).with_name("echo_pkg")
INTERPRETERS = ("/usr/bin/python3.11", "/usr/local/bin/python3.11", "/usr/bin/python3")
DENIED = {"EPERM", "EACCES", "EROFS", "ENOENT"}
CLEAN_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}

# Top-level modules the launcher imports from site-packages (found by importing it in a child,
# so the list follows the code), plus pyseccomp, which it only locates for the worker.
_IMPORTS = """
import sys
site = [p for p in sys.path if p.endswith("site-packages")][0]
before = set(sys.modules)
import broker.runtimes.sandbox.launcher
names = {"pyseccomp.py"}
for name in set(sys.modules) - before:
    origin = getattr(sys.modules[name], "__file__", None) or ""
    if origin.startswith(site + "/"):
        names.add(origin[len(site) + 1 :].split("/")[0])
print(site)
print("\\n".join(sorted(names)))
"""


def _as_user(command: list[str], home: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        env={**CLEAN_ENV, "HOME": str(home), **kwargs.pop("env", {})},
        user=UNPRIVILEGED_ID,
        group=UNPRIVILEGED_ID,
        extra_groups=[],
        capture_output=True,
        text=True,
        check=False,
        **kwargs,
    )


def _interpreter(home: Path) -> str:
    """A python3.11 the unprivileged user can run, or skip/fail saying why there is none."""
    wanted = f"{sys.version_info.major}.{sys.version_info.minor}"
    tried = []
    for candidate in INTERPRETERS:
        if not Path(candidate).is_file():
            continue
        probe = [candidate, "-S", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]
        result = _as_user(probe, home, cwd=home)
        if result.returncode == 0 and result.stdout.strip() == wanted:
            return candidate
        tried.append(f"{candidate}: {(result.stdout + result.stderr).strip()[:80]}")
    skip_or_fail(f"no python{wanted} an unprivileged user can run (tried {tried or INTERPRETERS})")
    raise AssertionError  # unreachable: skip_or_fail raises


def _user_namespaces_refused(python: str, home: Path) -> str | None:
    """Why unprivileged user namespaces cannot be made here (None: they can; it was tried)."""
    limit = Path("/proc/sys/user/max_user_namespaces")
    if limit.exists() and int(limit.read_text()) == 0:
        return "user.max_user_namespaces is 0"
    knob = Path("/proc/sys/kernel/unprivileged_userns_clone")
    if knob.exists() and knob.read_text().strip() == "0":
        return "kernel.unprivileged_userns_clone is 0"
    attempt = "import ctypes; raise SystemExit(ctypes.CDLL(None).unshare(0x10000000))"
    result = _as_user([python, "-S", "-c", attempt], home, cwd=home)
    if result.returncode != 0:
        return f"unshare(CLONE_NEWUSER) as uid {UNPRIVILEGED_ID} failed: {result.stderr[-200:]}"
    return None


def _stage_sources(workspace: Path) -> str:
    """Copy the broker, the sandbox and just the packages the launcher imports; the ``PYTHONPATH``.

    Copies, not links: CI's clone and its venv may sit where this user cannot read.
    """
    found = subprocess.run(
        [sys.executable, "-c", _IMPORTS], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout.split()
    site, names = Path(found[0]), found[1:]
    source = _copy(REPO / "broker", workspace / "src" / "broker").parent
    _copy(REPO / "sandbox", source / "sandbox")  # the worker's own code: the launcher finds it here
    chosen = workspace / "site"
    for name in names:
        _copy(site / name, chosen / name)
    return f"{source}{os.pathsep}{chosen}"


def _copy(source: Path, target: Path) -> Path:
    """Copy a file or a tree (without bytecode caches), readable by every user."""
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        shutil.copyfile(source, target)
    for path in [target.parent, target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


@pytest.fixture(scope="module")
def driver_results(launcher: SandboxLauncher) -> Iterator[dict[str, Any]]:
    """Run the driver once as the unprivileged user; its per-probe results."""
    if os.geteuid() != 0:
        pytest.skip("the tests run unprivileged already: all of tests/sandbox takes this path")
    workspace = Path(tempfile.mkdtemp(prefix="sandbox-unprivileged-"))
    try:
        workspace.chmod(0o755)
        home = workspace / "home"
        home.mkdir(mode=0o700)
        os.chown(home, UNPRIVILEGED_ID, UNPRIVILEGED_ID)
        python = _interpreter(home)
        refused = _user_namespaces_refused(python, home)
        if refused:
            skip_or_fail(f"unprivileged user namespaces are refused here: {refused}")
        secret = home / "secret.txt"
        secret.write_text("the unprivileged user's own file")
        secret.chmod(0o600)
        os.chown(secret, UNPRIVILEGED_ID, UNPRIVILEGED_ID)
        job = {
            "escape_package": str(_copy(ESCAPE_PACKAGE, workspace / "escape_pkg")),
            "echo_package": str(_copy(ECHO_PACKAGE, workspace / "echo_pkg")),
            "secret": str(secret),
            "limits": TEST_LIMITS.to_json(),
        }
        search_path = _stage_sources(workspace)
        run = _as_user(
            [python, "-S", str(_copy(DRIVER, workspace / DRIVER.name))],
            home,
            env={"PYTHONPATH": search_path},
            input=json.dumps(job),
            cwd=home,
            timeout=240,
        )
        assert run.returncode == 0, f"the driver failed:\n{run.stderr[-3000:]}"
        lines = [line for line in run.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
        assert len(lines) == 1, f"the driver printed no results:\n{run.stdout[-3000:]}"
        report: dict[str, Any] = json.loads(lines[0].removeprefix(RESULT_PREFIX))
        assert report["uid"] == UNPRIVILEGED_ID
        yield report["results"]
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def _blocked(outcome: Any, *errnos: str) -> None:
    assert isinstance(outcome, dict), outcome
    assert outcome.get("outcome") == "blocked", outcome
    if errnos:
        assert outcome.get("errno") in errnos, outcome


def test_unprivileged_workers_get_their_own_user_namespace(driver_results: dict[str, Any]) -> None:
    seen = driver_results["namespaces"]
    assert "error" not in seen, seen
    assert seen["theirs"] != seen["ours"]


def test_unprivileged_echo_package_answers(driver_results: dict[str, Any]) -> None:
    assert driver_results["echo_package"] == {"received": {"note": "héllo", "n": [1, 2.5, None]}}


def test_unprivileged_worker_has_no_capabilities(driver_results: dict[str, Any]) -> None:
    status = driver_results["status"]
    assert isinstance(status, dict), status
    for key in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        assert int(status[key], 16) == 0, (key, status[key])
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"


def test_unprivileged_cannot_reach_a_loopback_port(driver_results: dict[str, Any]) -> None:
    outcome = driver_results["loopback"]
    _blocked(outcome, "EPERM")
    assert outcome["stage"] == "socket"
    assert outcome["listener_accepted"] is False


def test_unprivileged_cannot_create_a_socket_to_an_outside_address(
    driver_results: dict[str, Any],
) -> None:
    outcomes = driver_results["outside"]
    assert len(outcomes) == 4, outcomes
    for outcome in outcomes.values():
        _blocked(outcome, "EPERM")
        assert outcome["stage"] == "socket"


def test_unprivileged_cannot_read_a_file_its_own_user_owns(driver_results: dict[str, Any]) -> None:
    outcome = driver_results["own_file"]
    assert outcome["driver_read"] == "the unprivileged user's own file"  # so only walls refuse
    _blocked(outcome, "ENOENT", "EACCES")


def test_unprivileged_cannot_write_outside_scratch(driver_results: dict[str, Any]) -> None:
    outcomes = driver_results["write"]
    assert len(outcomes) == 5, outcomes
    for outcome in outcomes.values():
        _blocked(outcome, *DENIED)
    assert driver_results["scratch"]["outcome"] == "escaped"  # the one writable place


def test_unprivileged_cannot_exec(driver_results: dict[str, Any]) -> None:
    outcomes = driver_results["exec"]
    assert outcomes, outcomes
    for outcome in outcomes.values():
        _blocked(outcome, "EPERM")


@pytest.mark.parametrize("name", ["newuser", "newns", "newnet"])
def test_unprivileged_cannot_unshare(driver_results: dict[str, Any], name: str) -> None:
    _blocked(driver_results["unshare"][name], "EPERM")


@pytest.mark.parametrize("probe", ["mount", "ptrace", "vsock", "netlink"])
def test_unprivileged_seccomp_refuses(driver_results: dict[str, Any], probe: str) -> None:
    _blocked(driver_results[probe], "EPERM")


def test_unprivileged_fork_bomb_hits_the_process_limit(driver_results: dict[str, Any]) -> None:
    outcome = driver_results["fork_bomb"]
    _blocked(outcome, "EAGAIN")
    assert outcome["forked"] < TEST_LIMITS.processes


def test_unprivileged_memory_past_the_cap_is_a_limit_error(
    driver_results: dict[str, Any],
) -> None:
    assert driver_results["memory"] == {"raised": "SandboxLimitExceeded", "limit": "memory"}


def test_unprivileged_cpu_past_the_cap_is_a_limit_error(driver_results: dict[str, Any]) -> None:
    assert driver_results["cpu"] == {"raised": "SandboxLimitExceeded", "limit": "cpu"}

"""``sandbox_support()``: what this host lacks for the sandbox, found by trying it.

The broker calls it before it enables sandbox runtimes and refuses them when the list is not
empty; it never falls back to running a package unsandboxed. Static checks give precise
messages for the usual gaps (no libseccomp, Landlock disabled); a real worker start then catches
whatever else the kernel or a container runtime refuses (user namespaces, mounting ``/proc``).

``cgroup_status()`` says whether each worker's process tree is also bounded by a cgroup. Missing
cgroups never make the sandbox unavailable: the per-process rlimits still apply, and the broker
has logged a warning naming what is missing.
"""

from __future__ import annotations

import ctypes.util
import functools
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from broker.runtimes.sandbox.cgroups import CgroupStatus, default_cgroups
from broker.runtimes.sandbox.errors import SandboxError
from broker.runtimes.sandbox.launcher import SandboxLauncher
from sandbox import _libc, landlock
from sandbox.protocol import WorkerLimits

_PROBE_MODULE = "def answer(payload):\n    return {'echo': payload}\n"


def sandbox_support() -> list[str]:
    """Names of the missing features; an empty list means workers can be started here."""
    return list(_probe())


def cgroup_status() -> CgroupStatus:
    """Which controllers bound each worker's whole process tree here, and what is missing."""
    return default_cgroups().status


@functools.cache
def _probe() -> tuple[str, ...]:
    missing = _static_gaps()
    if missing:
        return tuple(missing)
    return tuple(_try_a_worker())


def _static_gaps() -> list[str]:
    if sys.platform != "linux":
        return [f"Linux is required (this is {sys.platform})"]
    missing = []
    if not _libc.machine_supported():
        missing.append(f"unsupported CPU architecture {os.uname().machine}")
    if ctypes.util.find_library("seccomp") is None:
        missing.append("libseccomp is not installed (Debian package libseccomp2)")
    if importlib.util.find_spec("pyseccomp") is None:
        missing.append("the Python package pyseccomp is not installed")
    try:
        abi = landlock.abi_version()
    except OSError as exc:
        missing.append(f"Landlock cannot be queried: {exc}")
    else:
        if abi < 1:
            missing.append("Landlock is not enabled in this kernel (lsm=landlock at boot)")
    return missing


def _try_a_worker() -> list[str]:
    package = Path(tempfile.mkdtemp(prefix="sandbox-probe-"))
    try:
        package.chmod(0o755)
        (package / "probe_model.py").write_text(_PROBE_MODULE, encoding="utf-8")
        launcher = SandboxLauncher(startup_timeout=30.0)
        with launcher.start(
            package, limits=WorkerLimits(), tenant="probe", entry_point="probe_model:answer"
        ) as worker:
            if worker.call({"n": 1}, timeout=30.0) != {"echo": {"n": 1}}:
                return ["a probe worker answered wrongly"]
    except SandboxError as exc:
        reason = getattr(exc, "log_reason", None) or str(exc)
        return [f"a probe worker could not start: {reason}"]
    finally:
        shutil.rmtree(package, ignore_errors=True)
    return []

"""The worker's seccomp filter: allow by default, refuse the calls a model never needs.

A deny list (rather than an allow list) because vendor code brings native libraries whose
syscalls we cannot enumerate; what it denies is what would let code leave or reshape the sandbox:
network sockets, new namespaces, mounts, ``execve``, tracing, the keyring, BPF, perf, io_uring
(its socket and open operations bypass seccomp) and, fatally, module loading and kexec.
Calls from a foreign ABI (i386 ``int 0x80``) hit libseccomp's bad-architecture action: kill.
"""

from __future__ import annotations

import ctypes.util
import errno
import socket
from typing import Any

# Refused with EPERM: the model sees an ordinary error and can report it.
DENIED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "unshare",
    "setns",
    "execve",
    "execveat",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "name_to_handle_at",
    "open_by_handle_at",
    "fanotify_init",
    "quotactl",
    "acct",
    "swapon",
    "swapoff",
    "syslog",
    "vhangup",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
)
# The process is killed on the spot: no model has an innocent reason to try these.
FATAL = ("kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot")
# clone() flags that would create a namespace; each one is refused wherever it appears.
_CLONE_NEW_FLAGS = (
    0x00000080,  # CLONE_NEWTIME
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)


def import_pyseccomp(libseccomp: str) -> Any:
    """Import pyseccomp without its ``find_library`` calls, which each fork ``ldconfig -p``.

    The broker resolves the library path once and passes it in the worker spec; this saves
    several milliseconds per worker start and works where ``/sbin/ldconfig`` is not on hand.
    """
    known = {"c": "libc.so.6", "seccomp": libseccomp}
    original = ctypes.util.find_library

    def find_library(name: str) -> str | None:
        return known.get(name) or original(name)

    ctypes.util.find_library = find_library
    try:
        import pyseccomp  # type: ignore[import-untyped]  # noqa: PLC0415 - patched import above
    finally:
        ctypes.util.find_library = original
    return pyseccomp


def build(libseccomp: str) -> Any:
    """Build (not load) the filter, so it is ready before the worker loses its view of the host."""
    sc = import_pyseccomp(libseccomp)
    eperm = sc.ERRNO(errno.EPERM)
    filt = sc.SyscallFilter(sc.ALLOW)
    filt.add_rule(eperm, "socket", sc.Arg(0, sc.NE, socket.AF_UNIX))
    for name in DENIED:
        filt.add_rule(eperm, name)
    for name in FATAL:
        filt.add_rule(sc.KILL_PROCESS, name)
    for flag in _CLONE_NEW_FLAGS:
        filt.add_rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    # clone3 passes its flags in memory, where seccomp cannot look: make libc fall back to clone.
    filt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    return filt


def load(filt: Any) -> None:
    """Install the filter for this process and every thread and child it creates later."""
    filt.load()

"""Who the worker is: an unprivileged id, no capabilities in any set, and no way to gain any.

Order matters and is the reason this module exists: the bounding set can only be dropped while
``CAP_SETPCAP`` is held, and a new user namespace hands back a full capability set (bounding set
included), so capabilities are dropped *after* the last ``unshare(CLONE_NEWUSER)``.
"""
# Raw os calls on purpose: this code runs around pivot_root, where every path is a syscall
# argument and pathlib would only add an import to the worker's start.
# ruff: noqa: PTH123

from __future__ import annotations

import ctypes
import errno
import os

from sandbox import _libc

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
# SECBIT_NOROOT, SECBIT_NO_SETUID_FIXUP, SECBIT_NO_CAP_AMBIENT_RAISE, each with its _LOCKED bit,
# and SECBIT_KEEP_CAPS locked off: uid 0 in this namespace never means "capabilities" again.
_SECUREBITS = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def last_capability() -> int:
    """The highest capability number this kernel knows (read before ``/proc`` goes away)."""
    with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as f:
        return int(f.read())


def become(uid: int, gid: int) -> None:
    """Switch real, effective and saved ids to an unprivileged host id, with no extra groups.

    Done as host root; the kernel clears the permitted and effective capability sets when all
    uids leave 0, which is the first of the capability drops.
    """
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def set_dumpable(dumpable: bool) -> None:
    """Changing ids makes a process non-dumpable, which hands its ``/proc/self`` files to root.

    The worker turns it back on only to write its own user namespace map, then off again: a
    non-dumpable process writes no core file and cannot be ptraced even by its own uid.
    """
    _libc.prctl(PR_SET_DUMPABLE, int(dumpable))


def drop_capabilities(last_cap: int) -> None:
    """Empty the bounding, ambient, inheritable, permitted and effective sets; lock securebits."""
    for cap in range(last_cap + 1):
        try:
            _libc.prctl(PR_CAPBSET_DROP, cap)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: the kernel does not know this capability
                raise
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    _libc.prctl(PR_SET_SECUREBITS, _SECUREBITS)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _libc.syscall("capset", ctypes.addressof(header), ctypes.addressof(data))


def forbid_new_privileges() -> None:
    """``no_new_privs``: no setuid bit or file capability can ever raise this process again.

    Landlock and an unprivileged seccomp filter both require it.
    """
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1)


def die_with_parent(signal_number: int) -> None:
    """Ask the kernel to send ``signal_number`` when the parent (the reaper) exits."""
    _libc.prctl(PR_SET_PDEATHSIG, signal_number)

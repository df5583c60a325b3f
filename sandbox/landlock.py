"""Landlock through its three syscalls: the worker may read the runtime and the package, and
read and write only ``/scratch``.

Landlock is the second wall behind the mount namespace: if a bind mount ever exposed more than
intended, the worker still could not open it. From ABI 4 it also refuses TCP bind/connect, and from
ABI 6 it confines abstract UNIX sockets and signals to the worker's own domain.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Iterable

from sandbox import _libc

_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

READ = READ_FILE | READ_DIR
READ_EXEC = READ | EXECUTE
READ_WRITE = (
    READ | WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_DIR | MAKE_REG | MAKE_SYM | TRUNCATE | REFER
)
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # the kernel's struct is __attribute__((packed))
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


def abi_version() -> int:
    """The kernel's Landlock ABI version, or 0 when Landlock is absent or disabled at boot."""
    try:
        return _libc.syscall(_libc.SYS_LANDLOCK_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION)
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EOPNOTSUPP):
            return 0
        raise


def _handled_fs(abi: int) -> int:
    return _FS_BY_ABI[max(v for v in _FS_BY_ABI if v <= abi)]


def restrict_self(rules: Iterable[tuple[str, int]]) -> int:
    """Apply a ruleset granting each ``(path, access)`` and nothing else; return the ABI used.

    Requires ``no_new_privs`` (or ``CAP_SYS_ADMIN``). Rights unknown to this kernel's ABI are
    masked off rather than refused, so one rule list works from ABI 1 upwards.
    """
    abi = abi_version()
    if abi < 1:
        raise OSError(errno.EOPNOTSUPP, "Landlock is not available on this kernel")
    fs = _handled_fs(abi)
    attr = _RulesetAttr(
        handled_access_fs=fs,
        handled_access_net=(NET_BIND_TCP | NET_CONNECT_TCP) if abi >= 4 else 0,
        scoped=(SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if abi >= 6 else 0,
    )
    size = ctypes.sizeof(attr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = _libc.syscall(_libc.SYS_LANDLOCK_CREATE_RULESET, ctypes.addressof(attr), size, 0)
    try:
        for path, access in rules:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                allowed = access & fs
                if not stat.S_ISDIR(os.fstat(fd).st_mode):  # a file takes file rights only
                    allowed &= READ_FILE | WRITE_FILE | EXECUTE | TRUNCATE | IOCTL_DEV
                rule = _PathBeneathAttr(allowed_access=allowed, parent_fd=fd)
                _libc.syscall(
                    _libc.SYS_LANDLOCK_ADD_RULE,
                    ruleset,
                    _RULE_PATH_BENEATH,
                    ctypes.addressof(rule),
                    0,
                )
            finally:
                os.close(fd)
        _libc.syscall(_libc.SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0)
    finally:
        os.close(ruleset)
    return abi

"""The few libc entry points and raw syscalls the sandbox needs, with errno checking.

Python's ``os`` module has no ``unshare``, ``mount``, ``pivot_root``, ``prctl``, ``capset`` or
Landlock calls, so they go through ctypes. Every wrapper raises ``OSError`` with the real errno
and the call's name, because a silently ignored failure here is a silently missing wall.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)

# Syscall numbers that glibc has no wrapper for (or whose wrapper is missing in old glibc).
# Landlock (444-446) and close_range (436) use the unified numbering on every architecture.
_SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {"pivot_root": 155, "capset": 126, "close_range": 436},
    "aarch64": {"pivot_root": 41, "capset": 91, "close_range": 436},
}
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446


def machine_supported() -> bool:
    """Whether this CPU architecture's syscall numbers are known to this module."""
    return os.uname().machine in _SYSCALLS


def _nr(name: str) -> int:
    try:
        return _SYSCALLS[os.uname().machine][name]
    except KeyError as exc:
        raise OSError(0, f"no syscall number for {name} on {os.uname().machine}") from exc


def check(result: int, what: str) -> int:
    """Turn a libc ``-1`` into ``OSError(errno, what)``; return the result otherwise."""
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def syscall(name_or_nr: str | int, *args: int | bytes | ctypes.c_void_p | None) -> int:
    """Call a raw syscall by name (looked up for this architecture) or number, checked."""
    nr = _nr(name_or_nr) if isinstance(name_or_nr, str) else name_or_nr
    converted = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    return check(_libc.syscall(ctypes.c_long(nr), *converted), f"syscall {name_or_nr}")


def unshare(flags: int) -> None:
    """unshare(2): move this process into new namespaces."""
    check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None
) -> None:
    """mount(2); ``target`` names the mount point in error messages."""
    check(
        _libc.mount(
            source.encode() if source is not None else None,
            target.encode(),
            fstype.encode() if fstype is not None else None,
            ctypes.c_ulong(flags),
            data.encode() if data is not None else None,
        ),
        f"mount {target}",
    )


def umount2(target: str, flags: int) -> None:
    """umount2(2)."""
    check(_libc.umount2(target.encode(), ctypes.c_int(flags)), f"umount2 {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2), which glibc does not wrap."""
    syscall("pivot_root", new_root.encode(), put_old.encode())


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2) with integer arguments."""
    return check(
        _libc.prctl(
            ctypes.c_int(option),
            ctypes.c_ulong(arg2),
            ctypes.c_ulong(arg3),
            ctypes.c_ulong(arg4),
            ctypes.c_ulong(arg5),
        ),
        f"prctl {option}",
    )


def sethostname(name: str) -> None:
    """sethostname(2), allowed only in our own UTS namespace."""
    raw = name.encode()
    check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")

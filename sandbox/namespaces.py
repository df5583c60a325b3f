"""Namespaces and the worker's minimal read-only root, built with unshare, mount and pivot_root.

The worker sees only what is bound here: the Python runtime and its shared libraries, the
prepared environment and the package (all read-only), three device nodes, a size-capped private
tmpfs at ``/scratch`` and a fresh ``/proc`` for its own PID namespace. Everything else on the host,
including the broker's database and keyring, is simply not in its mount tree.
"""
# Raw os calls on purpose: this code runs around pivot_root, where every path is a syscall
# argument and pathlib would only add an import to the worker's start.
# ruff: noqa: PTH102, PTH103, PTH112, PTH114, PTH115, PTH120, PTH211

from __future__ import annotations

import os
from dataclasses import dataclass

from sandbox import _libc
from sandbox.protocol import ENV_MOUNT_PREFIX, PACKAGE_MOUNT, SCRATCH_MOUNT, WorkerSpec

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080
ALL_NEW_NAMESPACES = (
    CLONE_NEWNS
    | CLONE_NEWCGROUP
    | CLONE_NEWUTS
    | CLONE_NEWIPC
    | CLONE_NEWUSER
    | CLONE_NEWPID
    | CLONE_NEWNET
    | CLONE_NEWTIME
)
WORKER_NAMESPACES = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MNT_DETACH = 2
# statvfs f_flag bits share their values with the MS_* flags; a read-only remount of a bind mount
# must repeat the flags the kernel locked on it, or it is refused inside a user namespace.
_LOCKED_FLAGS = (
    MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME | MS_RELATIME
)

_STAGING = "/tmp"  # noqa: S108 - shadowed by our own tmpfs inside a private mount namespace
_DEVICES = ("null", "zero", "urandom")


def enter(flags: int) -> None:
    """Move this process into new namespaces; ``CLONE_NEWPID`` applies to its next child."""
    _libc.unshare(flags)


def map_self(inside_uid: int, inside_gid: int, outside_uid: int, outside_gid: int) -> None:
    """Write this process's one-id user namespace map, just after ``unshare(CLONE_NEWUSER)``.

    A process may map only its own ids, one each; ``setgroups`` must be denied first so the
    mapped group cannot be dropped to gain access that a negative group ACL refused.
    """
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{inside_uid} {outside_uid} 1")
    _write("/proc/self/gid_map", f"{inside_gid} {outside_gid} 1")


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class _Bind:
    source: str  # host path
    target: str  # path inside the new root
    writable: bool = False
    nodev: bool = True


def _binds(spec: WorkerSpec) -> list[_Bind]:
    binds = [_Bind(d, d) for d in spec.runtime_dirs]
    binds += [_Bind(d, f"{ENV_MOUNT_PREFIX}/{i}") for i, d in enumerate(spec.env_dirs)]
    binds.append(_Bind(spec.package_dir, PACKAGE_MOUNT))
    binds += [_Bind(f"/dev/{name}", f"/dev/{name}", nodev=False) for name in _DEVICES]
    return binds


def build_root(spec: WorkerSpec, scratch_uid: int, scratch_gid: int) -> None:
    """Build the worker's root on a tmpfs and pivot into it; the host tree is then detached.

    Sources are opened (``O_PATH``) before the staging tmpfs shadows ``/tmp``, and bound from
    ``/proc/self/fd/N``, so a package under ``/tmp`` (as in tests) is still reachable.
    """
    binds = _binds(spec)
    fds = [os.open(b.source, os.O_PATH | os.O_CLOEXEC) for b in binds]
    try:
        _libc.mount(None, "/", None, MS_REC | MS_PRIVATE, None)
        _libc.mount("tmpfs", _STAGING, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
        for bind, fd in zip(binds, fds, strict=True):
            _bind_readonly(bind, f"/proc/self/fd/{fd}")
    finally:
        for fd in fds:
            os.close(fd)
    _symlink_merged_usr()
    scratch = _STAGING + SCRATCH_MOUNT
    os.mkdir(scratch)
    _libc.mount(
        "tmpfs",
        scratch,
        "tmpfs",
        MS_NOSUID | MS_NODEV | MS_NOEXEC,
        f"size={spec.limits.scratch_bytes},mode=0700,uid={scratch_uid},gid={scratch_gid}",
    )
    os.mkdir(_STAGING + "/proc")
    _libc.mount("proc", _STAGING + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    os.chdir(_STAGING)
    # pivot_root(".", ".") stacks the old root under the new one; detaching it leaves only ours.
    _libc.pivot_root(".", ".")
    _libc.umount2(".", MNT_DETACH)
    os.chdir("/")
    _libc.mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None)


def _bind_readonly(bind: _Bind, source: str) -> None:
    target = _STAGING + bind.target
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    _libc.mount(source, target, None, MS_BIND, None)
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | (os.statvfs(target).f_flag & _LOCKED_FLAGS)
    if not bind.writable:
        flags |= MS_RDONLY
    if bind.nodev:
        flags |= MS_NODEV
    _libc.mount(None, target, None, flags, None)


def _symlink_merged_usr() -> None:
    """Recreate the host's ``/lib -> usr/lib`` style links so the dynamic loader finds libraries."""
    for name in ("lib", "lib64", "lib32"):
        host = f"/{name}"
        if os.path.islink(host) and os.path.isdir(_STAGING + "/" + os.readlink(host).lstrip("/")):
            os.symlink(os.readlink(host), f"{_STAGING}/{name}")

"""A hostile test model: the payload names an escape to attempt, the answer says what happened.

Every attempt returns ``{"outcome": "blocked", ...}`` when the sandbox refused it and
``{"outcome": "escaped", ...}`` when it worked; the tests assert on ``blocked``. Attempts that
cannot report (exec, a forbidden syscall) either fail with an error or end the worker.
"""

# Hostile code talks to the kernel as directly as it can: raw os calls, not pathlib.
# ruff: noqa: PTH109, PTH110, PTH115, PTH123, PTH208

import ctypes
import errno
import os
import socket
import stat
import struct
import sys
import time

_libc = ctypes.CDLL(None, use_errno=True)


def _blocked(exc: BaseException, **extra: object) -> dict[str, object]:
    code = getattr(exc, "errno", None)
    return {
        "outcome": "blocked",
        "error": type(exc).__name__,
        "errno": errno.errorcode.get(code, code) if isinstance(code, int) else None,
        **extra,
    }


def _libc_call(name: str, *args: object) -> dict[str, object]:
    raw = [a.encode() if isinstance(a, str) else a for a in args]
    result = getattr(_libc, name)(*raw)
    if result == -1:
        return {"outcome": "blocked", "errno": errno.errorcode[ctypes.get_errno()]}
    return {"outcome": "escaped", "result": result}


def _socket(family: int, kind: int, host: str | None, port: int | None) -> dict[str, object]:
    try:
        sock = socket.socket(family, kind)
    except OSError as exc:
        return _blocked(exc, stage="socket")
    try:
        if host is not None:
            sock.settimeout(2)
            sock.connect((host, port))
    except OSError as exc:
        return _blocked(exc, stage="connect")
    finally:
        sock.close()
    return {"outcome": "escaped", "stage": "connect" if host else "socket"}


def _read(path: str) -> dict[str, object]:
    try:
        with open(path, "rb") as f:
            data = f.read(64)
    except OSError as exc:
        return _blocked(exc)
    return {"outcome": "escaped", "data": data.decode("latin-1")}


def _write(path: str) -> dict[str, object]:
    try:
        with open(path, "wb") as f:
            f.write(b"pwned")
    except OSError as exc:
        return _blocked(exc)
    return {"outcome": "escaped"}


def _fork_bomb(count: int) -> dict[str, object]:
    children: list[int] = []
    failure: dict[str, object] = {"outcome": "escaped"}
    for _ in range(count):
        try:
            pid = os.fork()
        except OSError as exc:
            failure = _blocked(exc)
            break
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    return {**failure, "forked": len(children)}


def _fill_scratch(limit: int) -> dict[str, object]:
    written = 0
    chunk = b"x" * (1024 * 1024)
    try:
        with open("/scratch/fill", "wb") as f:
            while written < limit:
                written += f.write(chunk)
                f.flush()
    except OSError as exc:
        return _blocked(exc, written=written)
    return {"outcome": "escaped", "written": written}


def _open_many(count: int) -> dict[str, object]:
    files = []
    try:
        for _ in range(count):
            files.append(open("/dev/null", "rb"))  # noqa: SIM115 - kept open on purpose
    except OSError as exc:
        return _blocked(exc, opened=len(files))
    finally:
        for f in files:
            f.close()
    return {"outcome": "escaped", "opened": len(files)}


def _forge_frame() -> dict[str, object]:
    """Announce a 1 GiB answer straight on the channel, bypassing the worker's own cap."""
    for fd in range(3, 64):
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.write(fd, struct.pack(">I", 1 << 30))
                time.sleep(30)
        except OSError:
            continue
    return {"outcome": "blocked", "error": "no channel found"}


def _interfaces() -> list[str]:
    """Network interfaces from /proc/net/dev (if_nameindex needs a netlink socket, refused)."""
    with open("/proc/net/dev", encoding="ascii") as f:
        return [line.split(":")[0].strip() for line in f.readlines()[2:]]


def _listdir(path: str) -> list[str] | None:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return None


def _describe() -> dict[str, object]:
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            fds[fd] = "?"
    status = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in {
                "Uid",
                "Gid",
                "CapEff",
                "CapPrm",
                "CapBnd",
                "CapAmb",
                "NoNewPrivs",
                "Seccomp",
                "Groups",
            }:
                status[key] = value.strip()
    return {
        "env": dict(os.environ),
        "flags": {
            "isolated": sys.flags.isolated,
            "ignore_environment": sys.flags.ignore_environment,
            "no_site": sys.flags.no_site,
            "no_user_site": sys.flags.no_user_site,
        },
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "cwd": os.getcwd(),
        "fds": fds,
        "status": status,
        "root": _listdir("/"),
        "interfaces": _interfaces(),
    }


def attempt(payload: dict) -> dict:
    """Run the attempt named by ``payload["attempt"]`` and report its outcome."""
    what = payload.get("attempt", "echo")
    if what == "echo":
        return {"echo": payload, **_describe()}
    if what == "socket":
        return _socket(payload["family"], payload["type"], payload.get("host"), payload.get("port"))
    if what == "resolve":
        try:
            socket.getaddrinfo(payload["name"], 80)
        except OSError as exc:
            return _blocked(exc)
        return {"outcome": "escaped"}
    if what == "read":
        return _read(payload["path"])
    if what == "write":
        return _write(payload["path"])
    if what == "kill":
        try:
            os.kill(payload["pid"], 0)
        except OSError as exc:
            return _blocked(exc)
        return {"outcome": "escaped"}
    if what == "libc":
        return _libc_call(payload["name"], *payload.get("args", []))
    if what == "exec":
        try:
            os.execv(payload["path"], [payload["path"], "-c", "true"])
        except OSError as exc:
            return _blocked(exc)
    if what == "fork_bomb":
        return _fork_bomb(payload["count"])
    if what == "allocate":
        hog = [bytearray(1024 * 1024) for _ in range(payload["mib"])]
        return {"outcome": "escaped", "allocated_mib": len(hog)}
    if what == "spin":
        while True:
            pass
    if what == "sleep":
        time.sleep(payload["seconds"])
        return {"outcome": "slept"}
    if what == "fill_scratch":
        return _fill_scratch(payload["bytes"])
    if what == "open_files":
        return _open_many(payload["count"])
    if what == "big_answer":
        return {"x": "a" * payload["bytes"]}
    if what == "forge_frame":
        return _forge_frame()
    if what == "exists":
        return {"exists": os.path.exists(payload["path"])}
    if what == "raise":
        raise ValueError("the model failed on purpose")
    raise ValueError(f"unknown attempt {what!r}")

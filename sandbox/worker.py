"""The worker process: it locks itself into the sandbox, then serves one package on its channel.

:func:`main` runs in a clean ``python -I -S -B`` with an empty environment, the channel and
stdout/stderr (a pipe to the broker): either a fresh interpreter spawned by the broker, or a fork
of the launcher's zygote (:mod:`.zygote`), which imported this module before it forked and hands
over nothing else. Setting up from inside the new process (rather than in a ``preexec_fn``) keeps
the broker's threads out of it. The process first becomes a *reaper*: it enters the new
namespaces and forks; the child is PID 1 of the new PID namespace and becomes the worker, the
reaper stays outside, waits for it and turns the way it died into an exit code (see
``protocol.EXIT_*``).

Order of the worker's setup, each step needed by the next:
namespaces -> root filesystem + pivot_root -> rlimits -> unprivileged id -> user namespace ->
capabilities dropped -> no_new_privs -> Landlock -> fds closed -> seccomp -> import the package.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import resource
import select
import signal
import socket
import sys
from collections.abc import Iterator
from typing import Any, NoReturn

from sandbox import _libc, landlock, namespaces, privileges, protocol, seccomp_filter
from sandbox.protocol import (
    ENV_MOUNT_PREFIX,
    EXIT_CPU,
    EXIT_MEMORY,
    EXIT_NAMESPACES_REFUSED,
    EXIT_SETUP_FAILED,
    PACKAGE_MOUNT,
    SCRATCH_MOUNT,
    WorkerSpec,
)
from sandbox.rlimits import apply_rlimits

_SPEC_CAP = 1024 * 1024
_UNENCODABLE = (protocol.FrameTooLargeError, TypeError, ValueError)  # an answer that cannot go


def main(channel_fd: int) -> NoReturn:
    """Entry point of the worker process (run by the launcher; never call it in the broker)."""
    channel = socket.socket(fileno=channel_fd)
    try:
        spec = WorkerSpec.from_json(json.loads(protocol.recv(channel, _SPEC_CAP)))
        filt = seccomp_filter.build(spec.libseccomp)
        last_cap = privileges.last_capability()
        as_root = os.geteuid() == 0
        flags = namespaces.WORKER_NAMESPACES
        if not as_root:
            flags |= namespaces.CLONE_NEWUSER
        outside_uid, outside_gid = os.geteuid(), os.getegid()
        namespaces.enter(flags)
        if not as_root:
            namespaces.map_self(0, 0, outside_uid, outside_gid)
    except OSError as exc:
        _fail(channel, "namespaces", exc, EXIT_NAMESPACES_REFUSED)
    alive_r, alive_w = os.pipe()
    pid = os.fork()
    if pid:
        channel.close()
        os.close(alive_r)
        _reap(pid, spec)
    os.close(alive_w)
    try:
        privileges.die_with_parent(signal.SIGKILL)
        _lock_in(
            spec, filt, last_cap=last_cap, as_root=as_root, channel_fd=channel_fd, alive_r=alive_r
        )
        entry = _load_entry_point(spec.entry_point)
    except Exception as exc:  # noqa: BLE001 - any setup failure ends the worker, reported
        _fail(channel, "setup", exc, EXIT_SETUP_FAILED)
    _send(channel, {"ready": True}, spec.limits.max_frame_bytes)
    _serve(channel, entry, spec.limits.max_frame_bytes)


def _fail(channel: socket.socket, stage: str, exc: BaseException, code: int) -> NoReturn:
    try:
        _send(channel, {"error": f"{type(exc).__name__}: {exc}", "stage": stage}, _SPEC_CAP)
    finally:
        os._exit(code)


def _reap(pid: int, spec: WorkerSpec) -> NoReturn:
    """Wait for the worker and exit with a code that says how it ended."""
    while True:
        try:
            _, status, usage = os.wait4(pid, 0)
            break
        except InterruptedError:
            continue
    if os.WIFEXITED(status):
        os._exit(os.WEXITSTATUS(status))
    sig = os.WTERMSIG(status)
    cpu = usage.ru_utime + usage.ru_stime
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= spec.limits.cpu_seconds):
        os._exit(EXIT_CPU)
    os._exit(128 + sig)


def _lock_in(
    spec: WorkerSpec, filt: Any, *, last_cap: int, as_root: bool, channel_fd: int, alive_r: int
) -> None:
    namespaces.build_root(spec, spec.uid if as_root else 0, spec.gid if as_root else 0)
    _libc.sethostname(spec.hostname)
    apply_rlimits(spec.limits)
    if as_root:
        # A worker mapped to host root would escape RLIMIT_NPROC and own root's files: become a
        # dedicated unprivileged host id, then take a user namespace of its own as that id.
        privileges.become(spec.uid, spec.gid)
        privileges.set_dumpable(True)
        namespaces.enter(namespaces.CLONE_NEWUSER)
        namespaces.map_self(spec.uid, spec.gid, spec.uid, spec.gid)
    privileges.set_dumpable(False)
    privileges.drop_capabilities(last_cap)
    privileges.forbid_new_privileges()
    readable = [*spec.runtime_dirs, PACKAGE_MOUNT, "/dev/urandom", "/dev/zero", "/proc"]
    readable += [f"{ENV_MOUNT_PREFIX}/{i}" for i in range(len(spec.env_dirs))]
    rules = [(path, landlock.READ_EXEC) for path in readable]
    rules += [
        (SCRATCH_MOUNT, landlock.READ_WRITE),
        ("/dev/null", landlock.READ | landlock.WRITE_FILE),
    ]
    landlock.restrict_self(rules)
    # Changing ids clears the parent-death signal: arm it again now that they are final, then
    # check that the reaper did not die in between (its end of the pipe would read as EOF).
    privileges.die_with_parent(signal.SIGKILL)
    if select.select([alive_r], [], [], 0)[0]:
        os._exit(EXIT_SETUP_FAILED)
    os.close(alive_r)
    _redirect_stdin()
    os.closerange(3, channel_fd)
    os.closerange(channel_fd + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    os.environ.clear()
    # SIGXFSZ would kill the worker on a too-large file; an EFBIG error is the useful outcome.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    seccomp_filter.load(filt)
    os.chdir(SCRATCH_MOUNT)
    sys.path[:] = [PACKAGE_MOUNT, *(p for p in sys.path if p.startswith(tuple(spec.runtime_dirs)))]
    sys.path[1:1] = [f"{ENV_MOUNT_PREFIX}/{i}" for i in range(len(spec.env_dirs))]


def _redirect_stdin() -> None:
    """Replace stdin, a host file opened before pivot_root, by the sandbox's own /dev/null."""
    fd = os.open("/dev/null", os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)


def _load_entry_point(entry_point: str) -> Any:
    module_name, _, attr = entry_point.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"entry point {entry_point} is not callable")
    return target


def _serve(channel: socket.socket, entry: Any, cap: int) -> NoReturn:
    """Answer requests until the broker closes the channel.

    A request is ``{"payload": ...}``, with ``"stream": true`` when the broker reads a streamed
    answer. The answer is one frame (``ok``, or ``error`` with ``limit`` when a limit was hit);
    when the callable returns an iterator and the request streams, it is one ``chunk`` frame per
    item, then ``end`` or the error frame that ended it (see :func:`_stream`).
    """
    while True:
        try:
            request = json.loads(protocol.recv(channel, cap))
        except (protocol.ChannelClosedError, ConnectionError):
            os._exit(0)
        except (protocol.FrameTooLargeError, ValueError):
            os._exit(EXIT_SETUP_FAILED)
        try:
            reply = _answer(entry, request, cap)
            if isinstance(reply, Iterator):
                request = None
                reply = _stream(channel, reply, cap)
        except MemoryError:
            reply = None
        if reply is None:
            request = None
            _send_limit(channel, "memory", cap)
            os._exit(EXIT_MEMORY)
        channel.sendall(reply)


def _answer(entry: Any, request: Any, cap: int) -> bytes | Iterator[Any] | None:
    """Run the callable on one request and encode the reply; ``None`` means out of memory.

    An iterator the callable returns is handed back, unread, for :func:`_stream` when the
    request streams; to a request that does not, it is refused (and closed): a package streams
    only when its payload asks for it (``"stream": true``), so this is the package's mistake.
    """
    try:
        result = entry(request["payload"])
    except MemoryError:
        return None
    except Exception as exc:  # noqa: BLE001 - the model's failure is reported, not fatal
        return _encode({"error": type(exc).__name__, "detail": str(exc)[:200]}, cap)
    if isinstance(result, Iterator):
        if request.get("stream") is True:
            return result
        _close(result)
        detail = "the model streamed an answer to a call that did not ask for a stream"
        return _encode({"error": "unrequested stream", "detail": detail}, cap)
    try:
        return _encode({"ok": result}, cap)
    except _UNENCODABLE as exc:
        return _refusal(exc, cap)


def _stream(channel: socket.socket, chunks: Iterator[Any], cap: int) -> bytes | None:
    """Send each item of ``chunks`` as its own frame; return the frame that ends the stream.

    Each item must be a JSON object within the frame cap: an item that is not ends the stream
    with the same error a unary answer would get. The broker bounds the stream's total size and
    time; if it stops reading (the buyer went away) it kills this worker, so a failed send just
    ends the process. ``None`` means out of memory, as for :func:`_answer`.
    """
    try:
        for chunk in chunks:
            if not isinstance(chunk, dict):
                detail = f"a streamed chunk is a {type(chunk).__name__}, not a JSON object"
                return _encode({"error": "answer is not JSON", "detail": detail}, cap)
            try:
                frame = _encode({"chunk": chunk}, cap)
            except _UNENCODABLE as exc:
                return _refusal(exc, cap)
            try:
                channel.sendall(frame)
            except OSError:
                os._exit(0)
    except MemoryError:
        return None
    except Exception as exc:  # noqa: BLE001 - the model's failure is reported, not fatal
        return _encode({"error": type(exc).__name__, "detail": str(exc)[:200]}, cap)
    finally:
        _close(chunks)
    return _encode({"end": {}}, cap)


def _refusal(exc: Exception, cap: int) -> bytes:
    """The error frame for an answer (or chunk) that cannot be sent as it is."""
    if isinstance(exc, protocol.FrameTooLargeError):
        return _encode({"error": "answer too large", "limit": "frame", "size": exc.size}, cap)
    return _encode({"error": "answer is not JSON", "detail": str(exc)[:200]}, cap)


def _close(chunks: Iterator[Any]) -> None:
    """Close a generator the package returned, so its ``finally`` blocks run now."""
    close = getattr(chunks, "close", None)
    if callable(close):
        with contextlib.suppress(Exception):
            close()


def _encode(message: Any, cap: int) -> bytes:
    """Strict JSON (no NaN), compact, UTF-8: what the broker's orjson accepts."""
    text = json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return protocol.pack(text.encode(), cap)


def _send(channel: socket.socket, message: Any, cap: int) -> None:
    channel.sendall(_encode(message, cap))


def _send_limit(channel: socket.socket, limit: str, cap: int) -> None:
    with contextlib.suppress(OSError, MemoryError):
        _send(channel, {"error": f"{limit} limit reached", "limit": limit}, cap)

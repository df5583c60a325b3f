"""Start sandboxed workers for model packages and call them: the broker's side of the sandbox.

``SandboxLauncher.start`` gets a new process holding one end of a socket pair (and a pipe for its
output) that runs :func:`sandbox.worker.main` (the top-level ``sandbox`` package, the inside): by
default forked by the launcher's zygote (:mod:`sandbox.zygote`, through :mod:`.zygote_client`; a
clean ``python -I -S -B`` with an empty environment started once, which has already paid for the
interpreter and the imports), or with ``zygote=False`` spawned as a fresh ``python -I -S -B`` of
its own. Either way the worker locks itself in (no ``preexec_fn``, which is unsafe in a threaded
broker) and says ``ready``. ``Worker.call`` then exchanges length-prefixed JSON frames, with the
caller's deadline and a frame cap enforced here, on the broker's side, where the worker cannot lie;
``Worker.stream`` does the same for an answer the package streams, chunk by chunk
(:mod:`.worker_stream`).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes.util
import functools
import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from broker.runtimes.sandbox.cgroups import CgroupError, Cgroups
from broker.runtimes.sandbox.confinement import HostConfinement, WorkerLease
from broker.runtimes.sandbox.errors import (
    SandboxCrashed,
    SandboxLimitExceeded,
    SandboxModelError,
    SandboxTimeout,
    SandboxUnavailable,
    SandboxViolation,
)
from broker.runtimes.sandbox.process import SpawnedProcess, WorkerProcess
from broker.runtimes.sandbox.uids import WorkerIds
from broker.runtimes.sandbox.worker_stream import WorkerStream
from broker.runtimes.sandbox.zygote_client import Zygote, ZygoteGone
from sandbox import protocol
from sandbox.protocol import (
    EXIT_CPU,
    EXIT_MEMORY,
    EXIT_NAMESPACES_REFUSED,
    EXIT_SECCOMP,
    WorkerLimits,
    WorkerSpec,
)

_STDERR_KEEP = 64 * 1024
_REAP_WAIT = 2.0
_KILL_WAIT = 10.0  # a SIGKILLed reaper is reported within microseconds; this bounds a lost report
_SPEC_CAP = 1024 * 1024  # the start handshake's frames, whatever the package's frame cap


def _site_dir(module: str) -> str:
    """The ``sys.path`` entry that holds ``module``, for a worker that runs ``python -I -S``."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise SandboxUnavailable([f"the Python package {module!r} is not installed"])
    origin = Path(spec.origin)
    return str(origin.parent.parent if origin.name == "__init__.py" else origin.parent)


class SandboxLauncher:
    """Starts workers; holds what is the same for all of them (interpreter, runtime, confinement).

    When the broker is root, each live worker runs as a host uid/gid of its own from
    ``worker_ids`` (default: :func:`broker.runtimes.sandbox.confinement.default_worker_ids`),
    because ``RLIMIT_NPROC`` counts every process of a uid. As a non-root broker the worker keeps
    the broker's id inside its own user namespace. ``cgroups`` (default: detected once per
    process) bounds each worker's whole process tree where the host allows it.
    """

    def __init__(
        self,
        *,
        env_dirs: tuple[Path, ...] = (),
        runtime_dirs: tuple[Path, ...] | None = None,
        worker_ids: WorkerIds | None = None,
        cgroups: Cgroups | None = None,
        startup_timeout: float = 10.0,
        zygote: bool = True,
    ) -> None:
        self._python = os.path.realpath(sys.executable)
        runtime = (
            tuple(str(d) for d in runtime_dirs)
            if runtime_dirs is not None
            else default_runtime_dirs(sys.base_prefix)
        )
        self._runtime_dirs = runtime
        self._env_dirs = tuple(str(Path(d).resolve(strict=True)) for d in env_dirs)
        self._host = HostConfinement(worker_ids, cgroups)  # per-worker uid and cgroup
        self._startup_timeout = startup_timeout
        libseccomp = ctypes.util.find_library("seccomp")
        if libseccomp is None:
            raise SandboxUnavailable(["libseccomp is not installed (Debian: libseccomp2)"])
        self._libseccomp = libseccomp
        # What the worker imports before it locks itself in: the inside (the top-level
        # ``sandbox`` package) and pyseccomp. These paths are on its sys.path only until then;
        # none of them is mounted in its root, which holds the runtime, the package and scratch.
        paths = list(dict.fromkeys([_site_dir("sandbox"), _site_dir("pyseccomp")]))
        self._bootstrap = (
            f"import sys; sys.path[:0] = {paths!r}; from sandbox.worker import main; main({{fd}})"
        )
        # The command must not refer to the launcher: the zygote is stopped when the launcher
        # (and every worker it started) is gone, which a reference back would prevent.
        command = functools.partial(_zygote_command, self._python, paths, libseccomp)
        self._zygote = Zygote(command, startup_timeout) if zygote else None

    @property
    def zygote(self) -> Zygote | None:
        """The zygote forking this launcher's workers; ``None`` if made with ``zygote=False``."""
        return self._zygote

    def close(self) -> None:
        """Stop the zygote, and with it every worker it started; idempotent."""
        if self._zygote is not None:
            self._zygote.close()

    def start(
        self,
        package_dir: Path,
        *,
        limits: WorkerLimits,
        tenant: str,
        entry_point: str | None = None,
    ) -> Worker:
        """Start one worker for ``package_dir`` serving ``tenant`` only; wait until it is ready.

        ``entry_point`` (``module:callable``) defaults to the one in the package's
        ``manifest.json``. Raises :class:`SandboxUnavailable` when the kernel refuses the
        sandbox, :class:`SandboxCrashed` when the package fails to load.
        """
        package = Path(package_dir).resolve(strict=True)
        entry = entry_point or _manifest_entry_point(package)
        lease = self._host.lease(limits)  # [confinement] a host uid of its own (root broker)
        spec = WorkerSpec(
            package_dir=str(package),
            entry_point=entry,
            runtime_dirs=self._runtime_dirs,
            env_dirs=self._env_dirs,
            uid=lease.uid,
            gid=lease.gid,
            limits=limits,
            libseccomp=self._libseccomp,
        )
        try:
            channel, process, output = self._spawn()
        except BaseException:
            lease.release()
            raise
        worker = Worker(process, channel, output, tenant=tenant, limits=limits, lease=lease)
        # From here the worker's reaper exists (host pid ``process.pid``) and waits for its spec
        # (the worker has run only our bootstrap): what must happen to it first goes here.
        try:
            # [confinement] join the worker's cgroup before it gets its spec: it runs nothing
            # of the package before, so every process the package starts is inside the group.
            lease.confine(process.pid)
        except CgroupError as exc:
            worker.kill()
            raise SandboxUnavailable([str(exc)]) from exc
        try:
            worker.handshake(spec, self._startup_timeout)
        except BaseException:
            worker.kill()  # reaps, and releases the worker's uid and cgroup
            raise
        return worker

    def _spawn(self) -> tuple[socket.socket, WorkerProcess, IO[bytes] | None]:
        """A new worker process holding one end of a fresh socket pair; returns the other end.

        Through the zygote, a start that races with the zygote's death is tried once more on a
        new zygote, with a new socket pair (nothing of the first attempt is reused).
        """
        for attempt in (1, 2):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                process, output = self._new_process(theirs)
            except ZygoteGone as exc:
                ours.close()
                if attempt == 1:
                    continue
                raise SandboxCrashed(f"the sandbox zygote ended before forking: {exc}") from exc
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
            return ours, process, output
        raise AssertionError("unreachable")  # pragma: no cover

    def _new_process(self, theirs: socket.socket) -> tuple[WorkerProcess, IO[bytes] | None]:
        if self._zygote is None:
            popen = subprocess.Popen(  # noqa: S603 - our interpreter, our bootstrap, no shell
                [self._python, "-I", "-S", "-B", "-c", self._bootstrap.format(fd=theirs.fileno())],
                env={},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(theirs.fileno(),),
                cwd="/",
                start_new_session=True,
            )
            return SpawnedProcess(popen), popen.stdout
        read_end, write_end = os.pipe()
        try:
            child = self._zygote.spawn(theirs.fileno(), write_end)
        except BaseException as exc:
            os.close(read_end)
            if isinstance(exc, OSError):  # the fork failed, or no answer (TimeoutError)
                raise SandboxCrashed(f"the sandbox zygote forked no worker: {exc}") from exc
            raise
        finally:
            os.close(write_end)  # the worker holds it now; EOF on ours when the worker is gone
        return child, os.fdopen(read_end, "rb")


def _zygote_command(python: str, paths: list[str], libseccomp: str, control_fd: int) -> list[str]:
    """The zygote's command line: like a worker's, with the zygote's entry point."""
    bootstrap = (
        f"import sys; sys.path[:0] = {paths!r}; from sandbox.zygote import main; "
        f"main({control_fd}, {os.getpid()}, {libseccomp!r})"
    )
    return [python, "-I", "-S", "-B", "-c", bootstrap]


def default_runtime_dirs(base_prefix: str) -> tuple[str, ...]:
    """The directories a CPython worker needs: its prefix and the system's shared libraries."""
    return _existing_dirs((base_prefix, "/usr/lib", "/usr/lib64"))


def _existing_dirs(paths: Iterable[str]) -> tuple[str, ...]:
    seen: list[str] = []
    for path in paths:
        real = os.path.realpath(path)
        if Path(real).is_dir() and real not in seen:
            seen.append(real)
    return tuple(seen)


def _manifest_entry_point(package: Path) -> str:
    """Read ``entry_point`` from the package's ``manifest.json`` (the registry owns the format)."""
    try:
        manifest = orjson.loads((package / "manifest.json").read_bytes())
        return str(manifest["entry_point"])
    except (OSError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"{package}/manifest.json has no readable entry_point") from exc


class Worker:
    """One sandboxed worker process serving one tenant; not safe to share between tenants.

    Calls are serialised (a stream holds the worker until its answer ends). After a timeout, a
    limit hit, a crash or a stream abandoned mid-answer the worker is dead and every later call
    raises :class:`SandboxCrashed`; the pool starts a new one (and a new scratch).
    """

    def __init__(
        self,
        process: WorkerProcess,
        channel: socket.socket,
        output: IO[bytes] | None,
        *,
        tenant: str,
        limits: WorkerLimits,
        lease: WorkerLease | None = None,
    ) -> None:
        self.tenant = tenant
        self.limits = limits
        self._lease = lease  # [confinement] released by kill()
        self._process = process
        self._channel = channel
        self._lock = threading.Lock()
        self._dead: str | None = None
        self._output: collections.deque[bytes] = collections.deque()
        self._drain = threading.Thread(target=_drain, args=(output, self._output), daemon=True)
        self._drain.start()

    @property
    def pid(self) -> int:
        """Host pid of the worker's reaper (the worker itself is PID 1 of its own namespace)."""
        return self._process.pid

    @property
    def alive(self) -> bool:
        """Whether the worker can still take calls."""
        return self._dead is None and not self._process.exited()

    def oom_killed(self) -> bool:
        """Whether the worker's cgroup saw an OOM kill (memory across its process tree)."""
        return self._lease is not None and self._lease.oom_killed()

    def confined(self) -> bool:
        """Whether the worker, while alive, is still held by its cgroup (where it has one); see
        :meth:`broker.runtimes.sandbox.cgroups.WorkerGroup.intact`. A dead worker runs nothing:
        its group is removed on purpose when it is reaped."""
        return not self.alive or self._lease is None or self._lease.intact()

    def output(self) -> bytes:
        """The last 64 KiB the worker wrote to stdout/stderr, for the broker's log."""
        return b"".join(self._output)[-_STDERR_KEEP:]

    def handshake(self, spec: WorkerSpec, timeout: float) -> None:
        """Send the spec and wait for ``ready``; called once by :meth:`SandboxLauncher.start`."""
        deadline = time.monotonic() + timeout
        try:
            self._channel.sendall(protocol.pack(orjson.dumps(spec.to_json()), _SPEC_CAP))
            reply = orjson.loads(protocol.recv(self._channel, _SPEC_CAP, deadline))
        except TimeoutError as exc:
            self.kill()
            raise SandboxCrashed(f"worker not ready after {timeout} s") from exc
        except (OSError, EOFError, orjson.JSONDecodeError, protocol.FrameTooLargeError) as exc:
            code = self._reap()
            if code == EXIT_NAMESPACES_REFUSED:
                raise SandboxUnavailable(["the kernel refused the worker's namespaces"]) from exc
            raise SandboxCrashed(f"worker died while starting: {exc!r}", code) from exc
        if isinstance(reply, dict) and reply.get("ready") is True:
            return
        self.kill()
        error = str(reply.get("error")) if isinstance(reply, dict) else repr(reply)[:200]
        if isinstance(reply, dict) and reply.get("stage") == "namespaces":
            raise SandboxUnavailable([f"namespaces: {error}"])
        raise SandboxCrashed(f"worker setup failed: {error}")

    def call(self, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send ``payload`` to the package's callable and return its answer (a JSON object).

        A package that returns an iterator here is refused (:class:`SandboxModelError`, the
        worker stays usable): packages stream only when asked, through :meth:`stream`.
        """
        with self._lock:
            deadline = self._request({"payload": payload}, timeout)
            reply, _ = self._receive(deadline, timeout, self.limits.max_frame_bytes)
            return self._interpret(reply)

    def stream(self, payload: dict[str, Any], timeout: float) -> WorkerStream:
        """Send ``payload`` for a streamed answer; the package's chunks arrive as it yields them.

        The returned :class:`WorkerStream` holds this worker until the answer ends: ``timeout``
        bounds the whole stream, the frame cap each chunk, and ``max_frame_bytes`` the whole
        answer too. Errors before the first chunk raise here. Closing it before the end kills
        the worker (see :class:`WorkerStream`).
        """
        self._lock.acquire()
        try:
            deadline = self._request({"payload": payload, "stream": True}, timeout)
        except BaseException:
            self._lock.release()
            raise
        return WorkerStream(self, deadline, timeout)  # it owns the lock from here

    def _request(self, message: dict[str, Any], timeout: float) -> float:
        """Send one request (the caller holds the lock); returns the deadline of its answer."""
        if self._dead is not None:
            raise SandboxCrashed(f"worker is dead: {self._dead}")
        deadline = time.monotonic() + timeout
        try:
            request = protocol.pack(orjson.dumps(message), self.limits.max_frame_bytes)
        except protocol.FrameTooLargeError as exc:  # the request: the worker is still fine
            raise SandboxLimitExceeded("frame") from exc
        with self._exchanging(timeout):
            self._channel.settimeout(timeout)
            self._channel.sendall(request)
        return deadline

    def _receive(
        self, deadline: float, timeout: float, cap: int, limit: str = "frame"
    ) -> tuple[Any, int]:
        """The next frame before ``deadline``, decoded, and its size on the wire.

        A frame over ``cap`` kills the worker and raises the limit named ``limit`` (``frame``
        when it is over the frame cap too).
        """
        with self._exchanging(timeout, limit):
            body = protocol.recv(self._channel, cap, deadline)
            return orjson.loads(body), protocol.HEADER.size + len(body)

    @contextlib.contextmanager
    def _exchanging(self, timeout: float, limit: str = "frame") -> Iterator[None]:
        """Map what can go wrong on the channel to the sandbox errors; the worker dies of most."""
        try:
            yield
        except TimeoutError as exc:
            self._fail("timeout")
            raise SandboxTimeout(timeout) from exc
        except protocol.FrameTooLargeError as exc:
            if exc.size > self.limits.max_frame_bytes:
                limit = "frame"  # over the frame cap as well as ``limit``: name the plainer one
            self._fail(f"{limit} cap")
            raise SandboxLimitExceeded(limit) from exc
        except (OSError, EOFError) as exc:
            raise self._death() from exc
        except orjson.JSONDecodeError as exc:
            self._fail("protocol")
            raise SandboxCrashed("worker sent a malformed frame") from exc

    def _interpret(self, reply: Any) -> dict[str, Any]:
        if not isinstance(reply, dict):
            self._fail("protocol")
            raise SandboxCrashed("worker sent a reply that is not an object")
        if "ok" in reply:
            if not isinstance(reply["ok"], dict):
                raise SandboxModelError("answer", "the model's answer is not a JSON object")
            answer: dict[str, Any] = reply["ok"]
            return answer
        if "limit" in reply:
            self._fail(f"limit {reply['limit']}")
            raise SandboxLimitExceeded(str(reply["limit"]))
        raise SandboxModelError(str(reply.get("error"))[:100], str(reply.get("detail", ""))[:200])

    def _death(self) -> SandboxCrashed | SandboxLimitExceeded:
        """Work out why the worker died, from its reaper's exit code."""
        code = self._reap()
        self._dead = f"exit code {code}"
        if code == EXIT_MEMORY or self.oom_killed():  # [confinement] a cgroup OOM is a SIGKILL
            return SandboxLimitExceeded("memory")
        if code == EXIT_CPU:
            return SandboxLimitExceeded("cpu")
        if code == EXIT_SECCOMP:
            return SandboxViolation("killed by the seccomp filter (forbidden system call)", code)
        return SandboxCrashed(f"worker exited unexpectedly with code {code}", code)

    def _reap(self) -> int | None:
        code = self._process.wait(_REAP_WAIT)
        if code is None and not self._process.exited():
            self.kill()
        return code

    def _fail(self, reason: str) -> None:
        self._dead = reason
        self.kill()

    def kill(self) -> None:
        """Kill the worker and everything in its PID namespace; idempotent."""
        if self._dead is None:
            self._dead = "killed"
        if not self._process.exited():
            # SIGKILL to the reaper; the worker has PR_SET_PDEATHSIG=SIGKILL, and as PID 1 of its
            # namespace its death takes every process it started with it.
            self._process.kill()
            self._process.wait(_KILL_WAIT)
        self._channel.close()
        if self._lease is not None:
            self._lease.release()  # [confinement] after the reaper: cgroup removed, uid freed

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()


def _drain(stream: IO[bytes] | None, sink: collections.deque[bytes]) -> None:
    """Keep the tail of the worker's output so a chatty worker can neither block nor bloat us."""
    if stream is None:
        return
    kept = 0
    with stream:
        while chunk := stream.read1(8192):  # type: ignore[attr-defined]
            sink.append(chunk)
            kept += len(chunk)
            while kept - len(sink[0]) >= _STDERR_KEEP:
                kept -= len(sink.popleft())

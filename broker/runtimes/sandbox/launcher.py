"""Start sandboxed workers for model packages and call them: the broker's side of the sandbox.

``SandboxLauncher.start`` spawns a fresh ``python -I -S`` with an empty environment, no inherited
descriptors but one end of a socket pair, and :func:`broker.runtimes.sandbox.worker.main` as its
program; the worker locks itself in (no ``preexec_fn``, which is unsafe in a threaded broker) and
says ``ready``. ``Worker.call`` then exchanges length-prefixed JSON frames, with the caller's
deadline and a frame cap enforced here, on the broker's side, where the worker cannot lie.
"""

from __future__ import annotations

import collections
import ctypes.util
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import orjson

from broker.runtimes.sandbox import frames, namespaces
from broker.runtimes.sandbox.errors import (
    SandboxCrashed,
    SandboxLimitExceeded,
    SandboxModelError,
    SandboxTimeout,
    SandboxUnavailable,
    SandboxViolation,
)
from broker.runtimes.sandbox.limits import WorkerLimits
from broker.runtimes.sandbox.spec import (
    EXIT_CPU,
    EXIT_MEMORY,
    EXIT_NAMESPACES_REFUSED,
    EXIT_SECCOMP,
    WorkerSpec,
)

DEFAULT_WORKER_ID = 65534  # "nobody": unprivileged on the host; use a dedicated id in production
_STDERR_KEEP = 64 * 1024
_REAP_WAIT = 2.0
_SPEC_CAP = 1024 * 1024  # the start handshake's frames, whatever the package's frame cap


def _site_dir(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise SandboxUnavailable([f"the Python package {module!r} is not installed"])
    origin = Path(spec.origin)
    return str(origin.parent.parent if origin.name == "__init__.py" else origin.parent)


class SandboxLauncher:
    """Starts workers; holds what is the same for all of them (interpreter, runtime, worker id).

    ``worker_uid``/``worker_gid`` are the host ids a worker runs as when the broker is root: a
    non-zero id, ideally one that nothing else on the host uses, because ``RLIMIT_NPROC`` counts
    every process of that id. As a non-root broker the worker keeps the broker's id inside its
    own user namespace.
    """

    def __init__(
        self,
        *,
        env_dirs: tuple[Path, ...] = (),
        runtime_dirs: tuple[Path, ...] | None = None,
        worker_uid: int = DEFAULT_WORKER_ID,
        worker_gid: int = DEFAULT_WORKER_ID,
        startup_timeout: float = 10.0,
    ) -> None:
        if worker_uid == 0 or worker_gid == 0:
            raise ValueError("a sandbox worker must never run as host root (uid or gid 0)")
        self._python = os.path.realpath(sys.executable)
        runtime = (
            tuple(str(d) for d in runtime_dirs)
            if runtime_dirs is not None
            else namespaces.default_runtime_dirs(sys.base_prefix)
        )
        self._runtime_dirs = runtime
        self._env_dirs = tuple(str(Path(d).resolve(strict=True)) for d in env_dirs)
        self._uid = worker_uid
        self._gid = worker_gid
        self._startup_timeout = startup_timeout
        libseccomp = ctypes.util.find_library("seccomp")
        if libseccomp is None:
            raise SandboxUnavailable(["libseccomp is not installed (Debian: libseccomp2)"])
        self._libseccomp = libseccomp
        import_paths = [str(Path(__file__).resolve().parents[3])]
        import_paths.append(_site_dir("pyseccomp"))
        self._bootstrap = (
            f"import sys; sys.path[:0] = {list(dict.fromkeys(import_paths))!r}; "
            "from broker.runtimes.sandbox.worker import main; main({fd})"
        )

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
        spec = WorkerSpec(
            package_dir=str(package),
            entry_point=entry_point or _manifest_entry_point(package),
            runtime_dirs=self._runtime_dirs,
            env_dirs=self._env_dirs,
            uid=self._uid,
            gid=self._gid,
            limits=limits,
            libseccomp=self._libseccomp,
        )
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = subprocess.Popen(  # noqa: S603 - our interpreter, our bootstrap, no shell
                [self._python, "-I", "-S", "-B", "-c", self._bootstrap.format(fd=theirs.fileno())],
                env={},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(theirs.fileno(),),
                cwd="/",
                start_new_session=True,
            )
        finally:
            theirs.close()
        worker = Worker(process, ours, tenant=tenant, limits=limits)
        worker.handshake(spec, self._startup_timeout)
        return worker


def _manifest_entry_point(package: Path) -> str:
    """Read ``entry_point`` from the package's ``manifest.json`` (the registry owns the format)."""
    try:
        manifest = orjson.loads((package / "manifest.json").read_bytes())
        return str(manifest["entry_point"])
    except (OSError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"{package}/manifest.json has no readable entry_point") from exc


class Worker:
    """One sandboxed worker process serving one tenant; not safe to share between tenants.

    Calls are serialised. After a timeout, a limit hit or a crash the worker is dead and every
    later call raises :class:`SandboxCrashed`; the pool starts a new one (and a new scratch).
    """

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        channel: socket.socket,
        *,
        tenant: str,
        limits: WorkerLimits,
    ) -> None:
        self.tenant = tenant
        self.limits = limits
        self._process = process
        self._channel = channel
        self._lock = threading.Lock()
        self._dead: str | None = None
        self._output: collections.deque[bytes] = collections.deque()
        self._drain = threading.Thread(
            target=_drain, args=(process.stdout, self._output), daemon=True
        )
        self._drain.start()

    @property
    def pid(self) -> int:
        """Host pid of the worker's reaper (the worker itself is PID 1 of its own namespace)."""
        return self._process.pid

    @property
    def alive(self) -> bool:
        """Whether the worker can still take calls."""
        return self._dead is None and self._process.poll() is None

    def output(self) -> bytes:
        """The last 64 KiB the worker wrote to stdout/stderr, for the broker's log."""
        return b"".join(self._output)[-_STDERR_KEEP:]

    def handshake(self, spec: WorkerSpec, timeout: float) -> None:
        """Send the spec and wait for ``ready``; called once by :meth:`SandboxLauncher.start`."""
        deadline = time.monotonic() + timeout
        try:
            self._channel.sendall(frames.pack(orjson.dumps(spec.to_json()), _SPEC_CAP))
            reply = orjson.loads(frames.recv(self._channel, _SPEC_CAP, deadline))
        except TimeoutError as exc:
            self.kill()
            raise SandboxCrashed(f"worker not ready after {timeout} s") from exc
        except (OSError, EOFError, orjson.JSONDecodeError, frames.FrameTooLargeError) as exc:
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
        """Send ``payload`` to the package's callable and return its answer (a JSON object)."""
        with self._lock:
            if self._dead is not None:
                raise SandboxCrashed(f"worker is dead: {self._dead}")
            deadline = time.monotonic() + timeout
            cap = self.limits.max_frame_bytes
            try:
                request = frames.pack(orjson.dumps({"payload": payload}), cap)
            except frames.FrameTooLargeError as exc:  # the request: the worker is still fine
                raise SandboxLimitExceeded("frame") from exc
            try:
                self._channel.settimeout(timeout)
                self._channel.sendall(request)
                reply = orjson.loads(frames.recv(self._channel, cap, deadline))
            except TimeoutError as exc:
                self._fail("timeout")
                raise SandboxTimeout(timeout) from exc
            except frames.FrameTooLargeError as exc:
                self._fail("frame cap")
                raise SandboxLimitExceeded("frame") from exc
            except (OSError, EOFError) as exc:
                raise self._death() from exc
            except orjson.JSONDecodeError as exc:
                self._fail("protocol")
                raise SandboxCrashed("worker sent a malformed frame") from exc
            return self._interpret(reply)

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
        if code == EXIT_MEMORY:
            return SandboxLimitExceeded("memory")
        if code == EXIT_CPU:
            return SandboxLimitExceeded("cpu")
        if code == EXIT_SECCOMP:
            return SandboxViolation("killed by the seccomp filter (forbidden system call)", code)
        return SandboxCrashed(f"worker exited unexpectedly with code {code}", code)

    def _reap(self) -> int | None:
        try:
            return self._process.wait(_REAP_WAIT)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def _fail(self, reason: str) -> None:
        self._dead = reason
        self.kill()

    def kill(self) -> None:
        """Kill the worker and everything in its PID namespace; idempotent."""
        if self._dead is None:
            self._dead = "killed"
        if self._process.poll() is None:
            # SIGKILL to the reaper; the worker has PR_SET_PDEATHSIG=SIGKILL, and as PID 1 of its
            # namespace its death takes every process it started with it.
            os.kill(self._process.pid, signal.SIGKILL)
            self._process.wait()
        self._channel.close()

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

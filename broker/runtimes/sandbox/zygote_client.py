"""The broker's side of the zygote: start it on first use, ask it for workers, learn their ends.

:class:`Zygote` is owned by a ``SandboxLauncher``. The zygote process (:mod:`sandbox.zygote`) is
started lazily, by a thread of its own that then reads the zygote's replies and exit reports for as
long as it lives: the zygote's parent-death signal follows the *thread* that started it, so that
thread must outlive it. If the zygote dies, every worker it forked dies too (their parent-death
signal, and a SIGKILL through each pidfd here to be sure), each broker-side handle reports "exited
with an unknown code", and the next :meth:`Zygote.spawn` starts a new zygote and logs why.

``spawn`` is called from many gRPC threads at once: requests carry ids, a lock guards the tables
and another the socket's sends and its one close, so no thread ever writes to a descriptor number
that has been closed and reused. The zygote lives while the launcher or any of its workers does
(each worker's handle keeps the :class:`Zygote` alive); :meth:`Zygote.close` ends it and thereby
every worker it started.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import subprocess
import threading
import weakref
from collections.abc import Callable

from broker.logging import get_logger
from broker.runtimes.sandbox.process import Pidfd
from sandbox import protocol

_log = get_logger(__name__)
_EXIT_WAIT = 5.0

CommandFor = Callable[[int], list[str]]  # the zygote's command line, given its control fd


class ZygoteGone(Exception):
    """The zygote ended before it answered; a new one is started on the next request."""


class ZygoteChild:
    """A worker's reaper forked by the zygote: signalled by pidfd, its exit reported by the zygote.

    Implements :class:`broker.runtimes.sandbox.process.WorkerProcess`.
    """

    def __init__(self, pid: int, pidfd: int, keepalive: object) -> None:
        self._pid = pid
        self._pidfd = Pidfd(pidfd)
        self._ended = threading.Event()
        self._code: int | None = None
        self._keepalive = keepalive  # the Zygote, so it is not finalised under a live worker

    @property
    def pid(self) -> int:
        """Host pid of the reaper."""
        return self._pid

    def exited(self) -> bool:
        """Whether the zygote reported its end (or died itself, taking this process along)."""
        return self._ended.is_set()

    def wait(self, timeout: float) -> int | None:
        """The exit code the zygote reported; ``None`` if not within ``timeout`` s, or unknown."""
        self._ended.wait(timeout)
        return self._code

    def kill(self) -> None:
        """SIGKILL through the pidfd (safe although it is not the broker's child)."""
        self._pidfd.kill()

    def _end(self, code: int | None) -> None:
        self._code = code
        self._pidfd.close()
        self._ended.set()


class _Pending:
    """One start request waiting for the zygote's answer."""

    def __init__(self, keepalive: object) -> None:
        self.keepalive = keepalive
        self.done = threading.Event()
        self.child: ZygoteChild | None = None
        self.names: list[str] | None = None
        self.error: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


class _Link:
    """One zygote process, the thread that started it and reads it, and its open requests."""

    def __init__(self, command_for: CommandFor, timeout: float) -> None:
        self._timeout = timeout
        self._control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # A timeout bounds sends to a stuck zygote; the reader just loops over idle periods.
        self._control.settimeout(timeout)
        self._lock = threading.Lock()  # the tables and ``ended``
        self._send_lock = threading.Lock()  # the socket's sends and its close
        self._ids = itertools.count()
        self._pending: dict[int, _Pending] = {}
        self._children: dict[int, ZygoteChild] = {}
        self._closing = False
        self.ended: str | None = None
        self.pid: int | None = None
        self._thread = threading.Thread(
            target=self._run, args=(command_for, theirs), name="sandbox-zygote", daemon=True
        )
        self._thread.start()

    def spawn(self, channel_fd: int, output_fd: int, keepalive: object) -> ZygoteChild:
        """Have the zygote fork a worker holding these two descriptors; wait for its pid."""
        pending = self._request(protocol.OP_START, keepalive, [channel_fd, output_fd])
        if pending.child is None:
            raise ZygoteGone("the zygote sent no worker")
        return pending.child

    def modules(self) -> list[str]:
        """Names of the modules the zygote has imported."""
        return self._request(protocol.OP_MODULES, None, []).names or []

    def close(self) -> None:
        """Ask the zygote to exit (EOF on its control socket); its workers die with it."""
        self._closing = True
        with self._send_lock, contextlib.suppress(OSError):
            self._control.shutdown(socket.SHUT_RDWR)

    def _request(self, op: bytes, keepalive: object, fds: list[int]) -> _Pending:
        pending = _Pending(keepalive)
        with self._lock:
            if self.ended is not None:
                raise ZygoteGone(self.ended)
            request_id = next(self._ids)
            self._pending[request_id] = pending
        try:
            with self._send_lock:
                socket.send_fds(self._control, [protocol.REQUEST.pack(op, request_id)], fds)
        except OSError as exc:
            with self._lock:
                self._pending.pop(request_id, None)
            raise ZygoteGone(f"the zygote's control socket failed: {exc}") from exc
        if not pending.done.wait(self._timeout):
            with self._lock:
                abandoned = self._pending.pop(request_id, None) is not None
            if abandoned:  # a worker that arrives later is killed by the reader
                raise TimeoutError(f"the zygote did not answer within {self._timeout} s")
            pending.done.wait()  # the reader took the answer just now and is handing it over
        if pending.error is not None:
            raise pending.error
        return pending

    # --- the reader thread -------------------------------------------------------------------

    def _run(self, command_for: CommandFor, theirs: socket.socket) -> None:
        try:
            popen = subprocess.Popen(  # noqa: S603 - our interpreter, our bootstrap, no shell
                command_for(theirs.fileno()),
                env={},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # stderr stays the broker's: a crash is seen there
                pass_fds=(theirs.fileno(),),
                cwd="/",
                start_new_session=True,
            )
        except OSError as exc:
            self._end(f"the zygote could not be started: {exc}", None)
            return
        finally:
            theirs.close()
        self.pid = popen.pid
        _log.info("sandbox_zygote_started", pid=popen.pid)
        reason = "its control socket closed"
        try:
            while self._receive():
                pass
        except Exception as exc:  # noqa: BLE001 - a garbled report: fail closed, kill it all
            reason = f"protocol error: {exc!r}"
            popen.kill()
        self._end(reason, popen)

    def _receive(self) -> bool:
        try:
            msg, fds, flags, _ = socket.recv_fds(
                self._control, protocol.MAX_MESSAGE, 1, socket.MSG_CMSG_CLOEXEC
            )
        except TimeoutError:
            return True
        except OSError:
            return False
        if not msg:
            return False
        if flags & socket.MSG_CTRUNC:
            _close(fds)
            raise ValueError("truncated control message")
        kind = msg[:1]
        if kind == protocol.REPLY_STARTED and len(fds) == 1:
            _, request_id, pid = protocol.STARTED.unpack(msg)
            self._started_child(request_id, pid, fds[0])
            return True
        _close(fds)
        if kind == protocol.REPLY_EXITED:
            _, pid, code = protocol.EXITED.unpack(msg)
            with self._lock:
                child = self._children.pop(pid, None)
            if child is not None:
                child._end(code)  # the link owns its children's state
        elif kind == protocol.REPLY_FAILED:
            _, request_id, err = protocol.FAILED.unpack(msg)
            with self._lock:
                pending = self._pending.pop(request_id, None)
            if pending is not None:
                pending.fail(OSError(err, f"the zygote could not fork: {os.strerror(err)}"))
        elif kind == protocol.REPLY_MODULES:
            _, request_id = protocol.MODULES.unpack(msg[: protocol.MODULES.size])
            with self._lock:
                pending = self._pending.pop(request_id, None)
            if pending is not None:
                pending.names = msg[protocol.MODULES.size :].decode().split("\n")
                pending.done.set()
        else:
            raise ValueError(f"unknown control message {kind!r}")
        return True

    def _started_child(self, request_id: int, pid: int, pidfd: int) -> None:
        with self._lock:
            pending = self._pending.pop(request_id, None)
            child = ZygoteChild(pid, pidfd, pending.keepalive if pending else None)
            self._children[pid] = child  # until the zygote reports its exit
        if pending is None:
            child.kill()  # whoever asked for it stopped waiting
            return
        pending.child = child
        pending.done.set()

    def _end(self, reason: str, popen: subprocess.Popen[bytes] | None) -> None:
        with self._lock:
            self.ended = reason
            pending = list(self._pending.values())
            children = list(self._children.values())
            self._pending.clear()
            self._children.clear()
        with self._send_lock:
            self._control.close()
        for child in children:
            child.kill()  # its parent-death signal has fired; this is the belt to those braces
            child._end(None)
        code = None
        if popen is not None:
            try:
                code = popen.wait(_EXIT_WAIT)
            except subprocess.TimeoutExpired:
                popen.kill()
                code = popen.wait()
            self.ended = f"{reason}; the zygote exited with code {code} (its stderr is ours)"
        for request in pending:
            request.fail(ZygoteGone(self.ended))
        if self._closing:
            _log.info("sandbox_zygote_stopped", pid=self.pid, workers_killed=len(children))
        else:
            _log.warning(
                "sandbox_zygote_died",
                pid=self.pid,
                exit_code=code,
                reason=reason,
                workers_killed=len(children),
            )


class _Supervisor:
    """The current link, replaced when it has ended; what the finalizer of a Zygote closes."""

    def __init__(self, command_for: CommandFor, timeout: float) -> None:
        self._command_for = command_for
        self._timeout = timeout
        self._lock = threading.Lock()
        self._link: _Link | None = None
        self._closed = False

    def link(self) -> _Link:
        with self._lock:
            if self._closed:
                raise ZygoteGone("the launcher was closed")
            link = self._link
            if link is None or link.ended is not None:
                if link is not None:
                    _log.warning("sandbox_zygote_restarting", previous_pid=link.pid, why=link.ended)
                link = self._link = _Link(self._command_for, self._timeout)
            return link

    def current(self) -> _Link | None:
        with self._lock:
            return self._link

    def close(self) -> None:
        with self._lock:
            self._closed = True
            link, self._link = self._link, None
        if link is not None:
            link.close()


class Zygote:
    """A lazily started, self-restarting zygote for one launcher; thread-safe."""

    def __init__(self, command_for: CommandFor, timeout: float) -> None:
        self._supervisor = _Supervisor(command_for, timeout)
        self._finalizer = weakref.finalize(self, self._supervisor.close)
        # At exit the kernel closes the control socket, which stops the zygote just as well.
        self._finalizer.atexit = False

    def spawn(self, channel_fd: int, output_fd: int) -> ZygoteChild:
        """Fork a worker that holds ``channel_fd`` (its channel) and ``output_fd`` (stdout/err).

        Raises :class:`ZygoteGone` when the zygote ended before answering (the caller may try
        again: the next call starts a new one) and ``TimeoutError`` when it did not answer.
        """
        return self._supervisor.link().spawn(channel_fd, output_fd, self)

    def modules(self) -> list[str]:
        """What the zygote has imported (``sys.modules``), starting it if need be."""
        return self._supervisor.link().modules()

    @property
    def pid(self) -> int | None:
        """Host pid of the running zygote, if one has been started (for tests and operators)."""
        link = self._supervisor.current()
        return link.pid if link is not None and link.ended is None else None

    def close(self) -> None:
        """Stop the zygote; every worker it started dies with it. Idempotent."""
        self._finalizer()


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)

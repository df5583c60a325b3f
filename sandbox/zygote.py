"""The zygote: a pre-started clean interpreter that forks sandbox workers for the broker.

A fresh ``python -I -S -B`` costs a worker most of its cold start (the interpreter, then the
imports of :mod:`worker`). The zygote pays that once: the broker starts it like a worker (empty
environment, ``cwd=/``, its own session, one inherited socket), it imports :mod:`worker` and
pyseccomp, and then does nothing but fork. It never loads vendor code and never sees a payload or
a spec: those travel on the worker's own channel, which the zygote only hands over.

Control protocol (``SOCK_SEQPACKET``, one message per datagram, descriptors by ``SCM_RIGHTS``;
the message formats are in :mod:`sandbox.protocol`, which the broker's side imports):

- broker -> zygote ``S id`` with two descriptors, the worker's end of its channel and the write
  end of its output pipe: fork a worker. The child closes every other descriptor, takes the pipe
  as stdout/stderr and the channel as fd 3, starts a new session, restores a fresh interpreter's
  signal state and runs :func:`worker.main` exactly as a freshly spawned worker would.
- zygote -> broker ``P id pid`` with the child's pidfd: the worker exists. The zygote opens the
  pidfd before it ever waits for that child, so the pid cannot have been reused: the broker can
  signal it safely although it is not the broker's child. ``F id errno``: the fork failed.
- zygote -> broker ``X pid code``: a child ended; ``code`` as ``Popen.returncode`` (``-N`` for
  signal N). Only the zygote can wait for its children, so it reports for them.
- broker -> zygote ``M id``; reply ``M id`` and the sorted names in ``sys.modules``, one per line,
  so tests can check that nothing but the sandbox code was ever imported here.

Lifetimes, so that no worker outlives its supervision: the zygote exits when its control socket
reads EOF (the broker closed it or died) and has ``PR_SET_PDEATHSIG=SIGKILL`` towards the broker
thread that started it; each child has ``PR_SET_PDEATHSIG=SIGKILL`` towards the zygote, and the
worker inside towards that child (its reaper), so the whole tree goes when the zygote goes.
"""

from __future__ import annotations

import gc
import os
import resource
import select
import signal
import socket
import sys
from typing import Any, NoReturn

from sandbox import privileges, seccomp_filter, worker
from sandbox.protocol import (
    EXIT_SETUP_FAILED,
    EXITED,
    FAILED,
    MODULES,
    OP_MODULES,
    OP_START,
    REPLY_EXITED,
    REPLY_FAILED,
    REPLY_MODULES,
    REPLY_STARTED,
    REQUEST,
    STARTED,
)

CHILD_CHANNEL_FD = 3  # where the worker finds its channel, as a freshly spawned one would


def main(control_fd: int, broker_pid: int, libseccomp: str) -> NoReturn:
    """Entry point of the zygote process (started by the launcher; never call it in the broker)."""
    fresh = _signal_dispositions()
    privileges.die_with_parent(signal.SIGKILL)
    if os.getppid() != broker_pid:  # the broker's thread ended before the line above
        os._exit(0)
    seccomp_filter.import_pyseccomp(libseccomp)  # the first thing every worker needs
    # Keep what is imported by now out of the collector's reach: a child's collections would
    # otherwise write to every inherited object and copy the zygote's heap page by page.
    gc.freeze()
    _Zygote(socket.socket(fileno=control_fd), fresh).serve()


def _signal_dispositions() -> dict[int, Any]:
    """The signal handlers a fresh interpreter has, for each child to start from."""
    dispositions: dict[int, Any] = {}
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        handler = signal.getsignal(sig)
        if handler is not None:
            dispositions[sig] = handler
    return dispositions


class _Zygote:
    """The fork loop: one thread, so nothing else can run (or hold a lock) when it forks."""

    def __init__(self, control: socket.socket, fresh: dict[int, Any]) -> None:
        self._control = control
        self._fresh = fresh
        self._poller = select.poll()
        self._poller.register(control.fileno(), select.POLLIN)
        self._children: dict[int, int] = {}  # pidfd -> pid, until the zygote has reaped it

    def serve(self) -> NoReturn:
        """Fork on request and report exits until the broker goes away."""
        while True:
            for fd, _ in self._poller.poll():
                if fd == self._control.fileno():
                    if not self._request():
                        os._exit(0)  # the children follow: their parent-death signal
                else:
                    self._reap(fd)

    def _request(self) -> bool:
        """Handle one request; ``False`` when the broker is gone."""
        try:
            msg, fds, flags, _ = socket.recv_fds(self._control, REQUEST.size + 1, 2)
        except OSError:
            return False
        if not msg:
            _close(fds)
            return False
        if flags & socket.MSG_CTRUNC or len(msg) != REQUEST.size:
            _close(fds)  # a broken request has no id to answer; the broker's wait times out
            return True
        op, request_id = REQUEST.unpack(msg)
        if op == OP_START and len(fds) == 2:  # the channel and the output pipe
            return self._start(request_id, fds[0], fds[1])
        _close(fds)
        if op == OP_MODULES:
            names = "\n".join(sorted(sys.modules)).encode()
            return self._send(MODULES.pack(REPLY_MODULES, request_id) + names)
        return self._send(FAILED.pack(REPLY_FAILED, request_id, 22))  # EINVAL

    def _start(self, request_id: int, channel: int, output: int) -> bool:
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError as exc:
            _close([channel, output])
            return self._send(FAILED.pack(REPLY_FAILED, request_id, exc.errno or 0))
        if pid == 0:
            try:
                self._become_worker(parent, channel, output)
            finally:
                os._exit(EXIT_SETUP_FAILED)
        _close([channel, output])  # the worker must see EOF when the broker closes its end
        try:
            pidfd = os.pidfd_open(pid)  # not yet reaped: this pid is still our child
        except OSError as exc:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return self._send(FAILED.pack(REPLY_FAILED, request_id, exc.errno or 0))
        self._children[pidfd] = pid
        self._poller.register(pidfd, select.POLLIN)
        try:
            socket.send_fds(self._control, [STARTED.pack(REPLY_STARTED, request_id, pid)], [pidfd])
        except OSError:
            return False
        return True

    def _become_worker(self, zygote_pid: int, channel: int, output: int) -> None:
        """In the child: leave nothing of the zygote behind but its imports, then be a worker."""
        privileges.die_with_parent(signal.SIGKILL)
        if os.getppid() != zygote_pid:  # the zygote died before the line above
            return
        os.setsid()
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        for sig, handler in self._fresh.items():
            if signal.getsignal(sig) is not handler:
                signal.signal(sig, handler)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.dup2(channel, CHILD_CHANNEL_FD)  # output may have been fd 3: it is on 1 and 2 now
        os.closerange(CHILD_CHANNEL_FD + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        self._children.clear()  # other workers' host pids are none of this one's business
        worker.main(CHILD_CHANNEL_FD)

    def _reap(self, pidfd: int) -> None:
        pid = self._children.pop(pidfd)
        self._poller.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)  # the pidfd is readable: it has exited
        if not self._send(EXITED.pack(REPLY_EXITED, pid, os.waitstatus_to_exitcode(status))):
            os._exit(0)

    def _send(self, message: bytes) -> bool:
        try:
            self._control.send(message)
        except OSError:
            return False
        return True


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)

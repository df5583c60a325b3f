"""Several broker processes behind one listening port, so that a node serves on every core.

Why processes: the call path is Python, and one CPython process runs Python on one core at a
time (the GIL). ``[server] workers = N`` (default: one per core) runs N complete brokers::

    broker serve                     the supervisor: no gRPC, no database, no keys
      |-- worker 0   build_server(config, reuse_port=True)   binds first: migrates the database,
      |                                                      creates the node's key files, and
      |                                                      picks the port when it is 0
      |-- worker 1   the same, on worker 0's port
      ...

Each worker binds the port with ``SO_REUSEPORT``, and the kernel spreads new connections over
the listening workers (a gRPC channel is one connection, so one client channel stays with one
worker; many clients spread). Everything the workers share goes through what replicas share
already, and is safe for them by design: the database (the audit log's single integrator under
the database's lock, exactly-once deletions, the token vault, the registry), the key files
under the data directory, and the sandbox's uid leases (``flock``). A registry change made
through one worker reaches the other workers' model caches at once through the node's shared
change counter (:mod:`broker.registry.generation`); plans are cached per policy revision, so a
worker never applies a plan of a revision it has not activated.

The supervisor talks to each worker over a socket pair: it sends the worker its settings (the
configuration as the supervisor resolved it, the port, its index) as one JSON line; the worker
answers ``ready <port>`` once it accepts calls, and ``reload`` when it activated a new policy
revision (after ``broker.v1.Policies/ReloadPolicy``), which the supervisor passes on to every
other worker as SIGHUP. When the supervisor dies, even by SIGKILL, each worker reads end-of-file
on its socket and drains as on SIGTERM: no worker outlives its node.

Signals to the supervisor: SIGTERM and SIGINT drain every worker (each stops accepting calls,
reports NOT_SERVING and finishes its calls within ``shutdown_grace_seconds``); SIGHUP reloads
the policy bundle in every worker. A worker that dies is started again on the same port; its
calls in flight fail for their callers (UNAVAILABLE), and every call it answered has its audit
outcome entry, which was committed before the answer left. A worker that keeps dying within
seconds of its start stops the node instead of looping.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Final

import orjson

from broker.config import Config, ConfigError
from broker.logging import configure_logging, get_logger

if TYPE_CHECKING:  # the supervisor imports prometheus_client only when it serves metrics
    from broker.observability.metrics import MetricsPage

_log = get_logger(__name__)

WORKER_FD_ENV: Final = "BROKER_WORKER_FD"  # the worker's end of its socket pair
READY_TIMEOUT_S: Final = 180.0  # a first start migrates the database and probes the sandbox
QUICK_DEATH_S: Final = 10.0
CRASH_LOOP_LIMIT: Final = 5
_KILL_MARGIN_S: Final = 10.0
_MAX_LINE: Final = 1 << 20


class _StartInterrupted(Exception):
    """The node was asked to stop while its workers were starting."""


class WorkerStartFailed(Exception):
    """A worker exited or fell silent before it accepted calls; ``status`` is its exit code."""

    def __init__(self, index: int, status: int) -> None:
        super().__init__(f"broker worker {index} did not start (exit status {status})")
        self.index = index
        self.status = status


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as its host and port; ConfigError if malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"server.listen must be host:port, got {listen!r}")
    return host, int(port)


def with_port(config: Config, port: int) -> Config:
    """``config`` listening on ``port`` of the same host."""
    host, _ = split_listen(config.server.listen)
    server = config.server.model_copy(update={"listen": f"{host}:{port}"})
    return config.model_copy(update={"server": server})


def check_port_free(listen: str) -> None:
    """Refuse to start a node on a port another process listens on (ConfigError).

    Workers bind with ``SO_REUSEPORT``, which would let a second node share the port silently
    with a first one of the same user; a plain bind first finds the port taken.
    """
    host, port = split_listen(listen)
    if port == 0:
        return
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((bare, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"cannot listen on {listen}: address in use") from None
            raise ConfigError(f"cannot listen on {listen}: {exc.strerror}") from None


@dataclass
class _Worker:
    """One worker process and the supervisor's end of its socket pair."""

    index: int
    process: subprocess.Popen[bytes]
    channel: socket.socket
    pidfd: int
    started: float
    buffer: bytearray = field(default_factory=bytearray)
    closed: bool = False  # the worker closed its end of the socket (it is exiting)

    def close(self) -> None:
        self.channel.close()
        os.close(self.pidfd)


class WorkerSupervisor:
    """Runs ``workers`` broker processes on one port (see the module docstring).

    ``command`` is how a worker is started (default: this interpreter running ``broker serve``
    in worker mode); tests pass their own to make a worker misbehave.
    """

    def __init__(
        self,
        config: Config,
        *,
        workers: int,
        command: list[str] | None = None,
        ready_timeout: float = READY_TIMEOUT_S,
    ) -> None:
        if workers < 1:
            raise ValueError("a node needs at least one worker")
        self._config = config
        self._count = workers
        self._command = command or [sys.executable, "-m", "broker.cli.main", "serve", "--worker"]
        self._ready_timeout = ready_timeout
        self._workers: dict[int, _Worker] = {}
        self._quick_deaths: dict[int, int] = {}
        self._selector = selectors.DefaultSelector()
        # Plain flags and a wake-up pipe, never locks: signal handlers set them (see _on_signal).
        self._stopping = False
        self._hangup = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._revision: bytes = b""  # the last policy revision passed on to every worker
        self._metrics_page: MetricsPage | None = None
        self.port = 0
        self.status = 0

    @property
    def pids(self) -> dict[int, int]:
        """Worker index -> pid of the workers running now."""
        return {index: w.process.pid for index, w in self._workers.items()}

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start worker 0, then the others on its port; return once all accept calls.

        Raises WorkerStartFailed (the others are stopped) if one exits or stays silent.
        """
        check_port_free(self._config.server.listen)
        _, self.port = split_listen(self._config.server.listen)
        try:
            self._start_metrics_page()
            first = self._spawn(0)
            self.port = self._wait_ready(first)
            others = [self._spawn(index) for index in range(1, self._count)]
            for worker in others:
                self._wait_ready(worker)
        except BaseException:
            self.stop()
            raise
        _log.info("node_started", port=self.port, workers=self._count, pids=self.pids)

    def _start_metrics_page(self) -> None:
        """Serve the node's one metrics page here, summing what the workers record.

        The multiprocess directory is set in this process's environment before any worker
        starts, so each worker's prometheus_client writes its values there (see
        :mod:`broker.observability.metrics`).
        """
        listen = self._config.metrics.listen
        if listen is None:
            return
        from broker.observability import metrics  # noqa: PLC0415 - only a node that serves them

        metrics.prepare_multiprocess_dir(self._config.data_dir / "run" / "metrics")
        self._metrics_page = metrics.MetricsPage(listen)
        _log.info("metrics_started", port=self._metrics_page.start())

    def serve_forever(self) -> int:
        """Start (unless :meth:`start` ran already), supervise until SIGTERM or SIGINT, drain
        every worker; the exit status.

        The signal handlers are in place before the first worker starts: a node stopped while
        it starts drains the workers already serving, as it would later.
        """
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        try:
            if not self._workers:
                self.start()
            while not self._stopping:
                self.supervise_once(timeout=1.0)
        except WorkerStartFailed as exc:
            _log.error("node_start_failed", worker=exc.index, status=exc.status)
            self.status = exc.status or 1
        except _StartInterrupted:
            pass
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.stop()
        return self.status

    def request_stop(self) -> None:
        """Make :meth:`serve_forever` drain the workers and return (thread- and signal-safe)."""
        self._stopping = True
        self._wake()

    def reload(self) -> None:
        """Ask every worker to reload its policy bundle (SIGHUP)."""
        self._signal_all(signal.SIGHUP)

    def stop(self) -> None:
        """SIGTERM every worker, wait for each to drain, SIGKILL any that outlives the grace."""
        self._stopping = True
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self._config.server.shutdown_grace_seconds + _KILL_MARGIN_S
        for worker in list(self._workers.values()):
            try:
                worker.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _log.error("worker_killed", worker=worker.index, reason="drain took too long")
                worker.process.kill()
                worker.process.wait()
            self._forget(worker)
        if self._metrics_page is not None:
            self._metrics_page.stop()
            self._metrics_page = None
        _log.info("node_stopped")

    # -- supervision ----------------------------------------------------------------------

    def supervise_once(self, timeout: float) -> None:
        """Handle what happened: messages, exits (restarting the worker), signals."""
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                self._drain_wake()
                continue
            kind, worker = key.data
            if worker.index not in self._workers or self._workers[worker.index] is not worker:
                continue
            if kind == "exit":
                self._on_exit(worker)
            else:
                self._on_message(worker)
        if self._hangup:
            self._hangup = False
            _log.info("signal_received", signal="SIGHUP")
            self.reload()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Runs on the main thread between two bytecodes, maybe inside supervise_once: it only
        # sets a flag and writes to the wake-up pipe, which is safe there.
        if signum == signal.SIGHUP:
            self._hangup = True
            self._wake()
        else:
            self.request_stop()

    def _on_message(self, worker: _Worker) -> None:
        for line in self._read_lines(worker):
            if line.startswith(b"reload ") and line[7:] != self._revision:
                # One worker activated a revision (ReloadPolicy): the others reload too. Each of
                # them then reports the same revision, which is not passed on again.
                self._revision = line[7:]
                for other in self._workers.values():
                    if other is not worker:
                        _send_signal(other, signal.SIGHUP)
            elif line.startswith(b"ready "):
                _log.info("worker_ready", worker=worker.index, pid=worker.process.pid)

    def _on_exit(self, worker: _Worker) -> None:
        status = worker.process.wait()
        self._forget(worker)
        if self._metrics_page is not None:
            from broker.observability.metrics import mark_worker_dead  # noqa: PLC0415

            mark_worker_dead(worker.process.pid)
        if self._stopping:
            return
        lived = time.monotonic() - worker.started
        quick = lived < QUICK_DEATH_S
        self._quick_deaths[worker.index] = (
            self._quick_deaths.get(worker.index, 0) + 1 if quick else 0
        )
        _log.error("worker_exited", worker=worker.index, status=status, lived_s=round(lived, 3))
        if self._quick_deaths[worker.index] >= CRASH_LOOP_LIMIT:
            _log.error("node_crash_loop", worker=worker.index, deaths=CRASH_LOOP_LIMIT)
            self.status = 1
            self.request_stop()
            return
        self._spawn(worker.index)  # reports ready through the loop

    # -- workers ----------------------------------------------------------------------------

    def _spawn(self, index: int) -> _Worker:
        mine, theirs = socket.socketpair()
        try:
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                self._command,
                pass_fds=(theirs.fileno(),),
                env={**os.environ, WORKER_FD_ENV: str(theirs.fileno())},
            )
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        settings = {
            "index": index,
            "port": self.port,
            "migrate": index == 0,
            "config": self._config.model_dump(mode="json"),
        }
        mine.sendall(orjson.dumps(settings) + b"\n")
        worker = _Worker(index, process, mine, os.pidfd_open(process.pid), time.monotonic())
        self._workers[index] = worker
        self._selector.register(mine, selectors.EVENT_READ, ("message", worker))
        self._selector.register(worker.pidfd, selectors.EVENT_READ, ("exit", worker))
        return worker

    def _wait_ready(self, worker: _Worker) -> int:
        deadline = time.monotonic() + self._ready_timeout
        waiting = selectors.DefaultSelector()
        waiting.register(worker.channel, selectors.EVENT_READ)
        waiting.register(worker.pidfd, selectors.EVENT_READ)
        waiting.register(self._wake_r, selectors.EVENT_READ)
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                for key, _ in waiting.select(remaining):
                    if key.fileobj == self._wake_r:
                        self._drain_wake()
                        if self._stopping:
                            raise _StartInterrupted
                        continue
                    if key.fileobj is not worker.channel:
                        raise WorkerStartFailed(worker.index, worker.process.wait())
                    for line in self._read_lines(worker):
                        if line.startswith(b"ready "):
                            return int(line.split()[1])
                    if worker.closed:  # exiting: wait for its exit status
                        waiting.unregister(worker.channel)
        finally:
            waiting.close()
        _log.error("worker_silent", worker=worker.index, timeout_s=self._ready_timeout)
        worker.process.kill()
        raise WorkerStartFailed(worker.index, worker.process.wait())

    def _read_lines(self, worker: _Worker) -> list[bytes]:
        try:
            data = worker.channel.recv(65536)
        except OSError:
            data = b""
        if not data:  # the worker closed its end: it is exiting; its pidfd will say so
            worker.closed = True
            self._selector.unregister(worker.channel)
            return []
        worker.buffer += data
        if len(worker.buffer) > _MAX_LINE:
            worker.buffer.clear()
            return []
        *lines, rest = bytes(worker.buffer).split(b"\n")
        worker.buffer[:] = rest
        return lines

    def _forget(self, worker: _Worker) -> None:
        if self._workers.get(worker.index) is worker:
            del self._workers[worker.index]
        for fileobj in (worker.channel, worker.pidfd):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(fileobj)
        worker.close()

    def _signal_all(self, signum: signal.Signals) -> None:
        for worker in self._workers.values():
            _send_signal(worker, signum)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # full: already awake
            os.write(self._wake_w, b"\0")

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass


def _send_signal(worker: _Worker, signum: signal.Signals) -> None:
    if worker.process.poll() is None:
        worker.process.send_signal(signum)


@dataclass(frozen=True)
class WorkerSettings:
    """What the supervisor tells a worker: its index, the port, and the node's configuration
    (with ``auto_migrate`` off for every worker but the first, which migrated already)."""

    index: int
    port: int
    config: Config


def read_settings(channel: socket.socket) -> WorkerSettings:
    """The one JSON line the supervisor sends first on the worker's socket."""
    buffer = bytearray()
    while b"\n" not in buffer:
        data = channel.recv(65536)
        if not data or len(buffer) > _MAX_LINE:
            raise ConfigError("the node's supervisor sent no settings to this worker")
        buffer += data
    document = orjson.loads(bytes(buffer).split(b"\n", 1)[0])
    config = Config.model_validate(document["config"])
    if not document["migrate"]:
        database = config.database.model_copy(update={"auto_migrate": False})
        config = config.model_copy(update={"database": database})
    return WorkerSettings(int(document["index"]), int(document["port"]), config)


def run_worker(channel: socket.socket) -> None:
    """A worker's life: read its settings, build and serve its broker, report to the supervisor."""
    from broker.server.app import build_server  # noqa: PLC0415 - the supervisor never needs it

    settings = read_settings(channel)
    logging = settings.config.logging
    configure_logging(
        logging.level, json_output=logging.json_output, fields={"worker": settings.index}
    )
    server = build_server(
        with_port(settings.config, settings.port), reuse_port=True, metrics_page=False
    )
    send_lock = threading.Lock()

    def send(line: str) -> None:
        # If the supervisor is gone, the watcher below stops this worker.
        with send_lock, contextlib.suppress(OSError):
            channel.sendall(line.encode() + b"\n")

    if server.cluster is None:  # a cluster replica's workers hear of activations on its feed
        server.policies.on_activated(lambda revision, previous: send(f"reload {revision}"))

    def watch_supervisor() -> None:
        try:
            while channel.recv(4096):
                pass
        except OSError:
            pass
        _log.warning("supervisor_gone", action="draining")
        server.request_stop()

    threading.Thread(target=watch_supervisor, name="supervisor-watch", daemon=True).start()
    server.serve_forever(on_started=lambda: send(f"ready {server.port}"))

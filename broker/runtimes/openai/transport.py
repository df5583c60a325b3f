"""Pooled HTTP connections whose calls can be abandoned from another thread.

Why this exists: a synchronous ``httpx`` call blocked in ``recv`` cannot be interrupted by
closing the response from another thread (on Linux, ``close`` on a socket does not wake a
thread blocked reading it), and before the response headers arrive there is no response object
to close at all. So a buyer who goes away, or a deadline that passes while a vendor trickles
bytes, would keep a worker thread and a vendor connection busy until some read timeout.

The fix stays inside httpcore's public extension point, the network backend: every socket read
and write happens inside a ``CallGuard`` (a per-call context bound to the current thread), which
records the sockets that call used. ``CallGuard.abort`` shuts those sockets down
(``shutdown(SHUT_RDWR)`` does wake a blocked ``recv``), and the blocked httpx call fails at once;
the runtime then reports the abort's reason (cancelled, or deadline) instead of a network error.
A guard that has finished ignores ``abort``, so a late canceller can never touch a pooled
connection that another call has taken over since.

Deadlines are watched by one ``DeadlineWatcher`` thread for every call, not by a
``threading.Timer`` per call: ``Timer.start`` creates a thread and waits until it runs, which
cost 0.04 ms on a quiet machine and up to several ms on a busy one, all of it on the path of a
streamed call's first chunk. Arming the shared watcher is a heap push under a lock.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import ssl
import threading
import time
import typing
from collections.abc import Iterator
from enum import Enum

import httpcore
import httpx


class AbortReason(Enum):
    """Why a call was abandoned."""

    CANCELLED = "cancelled"
    DEADLINE = "deadline"


class CallGuard:
    """The sockets one call is using, and whether the call has been abandoned."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: list[httpcore.NetworkStream] = []
        self._done = False
        self.reason: AbortReason | None = None

    def abort(self, reason: AbortReason) -> None:
        """Abandon the call: shut its sockets down. Idempotent; a no-op once the call ended."""
        with self._lock:
            if self._done or self.reason is not None:
                return
            self.reason = reason
            streams = list(self._streams)
        for stream in streams:
            _shutdown(stream)

    def finish(self) -> None:
        """Mark the call ended; later aborts do nothing."""
        with self._lock:
            self._done = True
            self._streams.clear()

    def _track(self, stream: httpcore.NetworkStream) -> None:
        with self._lock:
            aborted = self.reason is not None
            if not aborted and not self._done and stream not in self._streams:
                self._streams.append(stream)
        if aborted:
            _shutdown(stream)
            raise httpcore.ReadError("call abandoned")


class Watch:
    """One armed deadline; ``cancel`` disarms it (idempotent, any thread)."""

    __slots__ = ("_watcher", "cancelled", "guard")

    def __init__(self, watcher: DeadlineWatcher, guard: CallGuard) -> None:
        self._watcher = watcher
        self.guard: CallGuard | None = guard
        self.cancelled = False

    def cancel(self) -> None:
        """Disarm: the guard will not be aborted for this deadline."""
        self._watcher._disarm(self)


class DeadlineWatcher:
    """Aborts guards whose deadline passed, from one daemon thread started on first use.

    A disarmed watch is only marked (and lets go of its guard); it leaves the heap when its
    time comes or when disarmed watches make up more than half of the heap, which is then
    rebuilt without them. So a buyer's long deadline cannot make finished calls pile up:
    the heap holds at most about twice the calls in flight.
    """

    _COMPACT_AT = 64  # disarmed watches tolerated before a rebuild is considered

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Watch]] = []
        self._disarmed = 0
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, guard: CallGuard, timeout: float) -> Watch:
        """Abort ``guard`` with ``AbortReason.DEADLINE`` in ``timeout`` seconds unless cancelled."""
        entry = Watch(self, guard)
        due = time.monotonic() + timeout
        with self._cond:
            earliest = self._heap[0][0] if self._heap else None
            heapq.heappush(self._heap, (due, next(self._order), entry))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="openai-deadlines", daemon=True
                )
                self._thread.start()
            elif earliest is None or due < earliest:
                self._cond.notify()
        return entry

    @property
    def pending(self) -> int:
        """Watches still in the heap, disarmed ones included (for tests and metrics)."""
        with self._cond:
            return len(self._heap)

    def _disarm(self, entry: Watch) -> None:
        with self._cond:
            if entry.cancelled:
                return
            entry.cancelled = True
            entry.guard = None
            self._disarmed += 1
            if self._disarmed > self._COMPACT_AT and 2 * self._disarmed > len(self._heap):
                self._heap = [item for item in self._heap if not item[2].cancelled]
                heapq.heapify(self._heap)
                self._disarmed = 0

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                due, _, entry = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                if entry.cancelled:
                    self._disarmed -= 1
                    continue
                guard = entry.guard
            if guard is not None:
                guard.abort(AbortReason.DEADLINE)


_current = threading.local()


@contextlib.contextmanager
def guarded(guard: CallGuard) -> Iterator[None]:
    """Run the enclosed network operations on behalf of ``guard`` (in this thread)."""
    previous = getattr(_current, "guard", None)
    _current.guard = guard
    try:
        yield
    finally:
        _current.guard = previous


def _track(stream: httpcore.NetworkStream) -> None:
    guard: CallGuard | None = getattr(_current, "guard", None)
    if guard is not None:
        guard._track(stream)


def _shutdown(stream: httpcore.NetworkStream) -> None:
    sock = stream.get_extra_info("socket")
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class _TrackedStream(httpcore.NetworkStream):
    """A socket stream that tells the current call's guard before each blocking operation."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        _track(self)
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        _track(self)
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        _track(self)
        return _TrackedStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class _GuardedBackend(httpcore.NetworkBackend):
    """httpcore's synchronous backend, with every stream wrapped in ``_TrackedStream``."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        stream = _TrackedStream(
            self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        )
        _track(stream)
        return stream

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        return _TrackedStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def ssl_context_for(ca_pem: str) -> ssl.SSLContext:
    """Certificate verification against ``ca_pem``, or the system trust store when empty."""
    if ca_pem:
        return ssl.create_default_context(cadata=ca_pem)
    return ssl.create_default_context()


def new_client(*, ca_pem: str, max_connections: int) -> httpx.Client:
    """A pooled, thread-safe client whose calls a ``CallGuard`` can abandon.

    No proxies from the environment (``trust_env=False``): where vendor traffic goes is the
    registry's decision, not an environment variable's. Redirects are not followed, so the API
    key is never sent to a host the registry did not name.
    """
    context = ssl_context_for(ca_pem)
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=32)
    transport = httpx.HTTPTransport(verify=context, limits=limits, trust_env=False)
    # httpx does not take a network backend, so its pool (still unused here) is swapped for one
    # with the same settings that does.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=_GuardedBackend(),
    )
    return httpx.Client(transport=transport, follow_redirects=False, trust_env=False)

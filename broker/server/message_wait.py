"""Bound how long, and how many at once, the sync server's calls may wait for a request message.

grpcio's synchronous server starts a unary call's handling in a pool thread, which then waits
there for the call's request message. A client that opens ``max_workers`` calls and never sends
their message would hold every thread, and the process would stop answering, health checks
included. :class:`SyncBridge` registers each unary-request method as request-streaming instead,
so the handler starts before the message and reads it itself, through :class:`MessageWaits`:

- a call whose message is not in ``WAITING_GRACE_SECONDS`` after the read started counts as
  waiting; one client address may have at most ``share`` such calls (a quarter of the threads
  by default), and all addresses together ``total`` (half the threads);
- a call that would go beyond either is refused (RESOURCE_EXHAUSTED) once it has waited
  ``CROWDED_GRACE_SECONDS``, a fifth of the normal grace: with this server every waiting call
  holds a thread, so each stalled call past the limits holds one only that long. Calls that
  send their message are never refused, whatever their address has waiting (several clients
  behind one proxy share an address);
- a call whose message has not come ``timeout`` seconds after the read started is ended
  (DEADLINE_EXCEEDED); a call that ends without a message is INVALID_ARGUMENT, as the grpc.aio
  bridge answers (:mod:`broker.server.aio`, which does the same on its event loop).

A client that sends its message with the call (every gRPC client does) never counts: its read
returns as soon as the pool thread starts, and costs two dictionary operations under a lock.
What this cannot stop: stalled calls sent faster than the crowded grace turns them away still
keep the threads busy, each for that grace (a flood, which a front proxy's rate limits or
``[server] aio`` answer; SECURITY.md).

One watcher thread looks at the waiting calls every ``_SWEEP_SECONDS``. To end a call it hands
the waiting thread a sentinel through grpcio's own request slot and condition (``_RPCState``):
the thread wakes as if a message had come, and ends the call with a status that says why.
grpcio has no public way to wake a thread blocked on a request; where those internals are
missing (another grpcio), the watcher cancels the call instead, which still frees the thread,
and ``tests/unit/server/test_message_wait.py`` fails so that the upgrade is noticed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from broker.logging import get_logger
from broker.observability import metrics
from broker.server.interceptors import (
    BoundaryInterceptor,
    Handler,
    WrappedHandlers,
)

_log = get_logger(__name__)

#: A call whose request message is not in this soon after its read started counts as waiting.
WAITING_GRACE_SECONDS = 0.25
#: A call whose address has its share waiting, or any call while the server has its total, is
#: refused once it has waited this long for its message.
CROWDED_GRACE_SECONDS = 0.05
#: How often the watcher looks at the waiting calls: the resolution of the graces and timeout;
#: more often while some call counts as waiting (only then can a call be crowded out).
_SWEEP_SECONDS = 0.1
_CROWDED_SWEEP_SECONDS = 0.02
#: Handed to a waiting thread in place of a message: its wait has been ended.
_ENDED = object()
#: Calls ended are logged as one summary at most this often (a flood must not flood the log).
_LOG_EVERY_SECONDS = 1.0


def client_address(peer: str) -> str:
    """A call's client as the limits count it: its address without the port.

    ``ipv4:10.0.0.7:51234`` -> ``ipv4:10.0.0.7``, ``ipv6:[::1]:51234`` -> ``ipv6:[::1]``; any
    other form (a Unix socket) is kept whole.
    """
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host, sep, port = rest.rpartition(":")
        if sep and port.isdigit():
            return f"{kind}:{host}"
    return peer


def too_many_waiting(waiting: int) -> str:
    """The RESOURCE_EXHAUSTED text for a client whose share of waiting calls is full."""
    return (
        f"{waiting} calls from this client are already waiting for their request message; "
        "send each call's request with it"
    )


def too_many_waiting_in_all(waiting: int) -> str:
    """The RESOURCE_EXHAUSTED text for a call past the server's limit on waiting calls."""
    return (
        f"{waiting} calls are already waiting for their request message on this server; "
        "send each call's request with it"
    )


def message_too_late(timeout: float) -> str:
    """The DEADLINE_EXCEEDED text for a call whose request message did not come in time."""
    return (
        f"the call's request message did not arrive within {timeout:g} s of the call; "
        "send the request with the call"
    )


NO_MESSAGE = "the call ended without its request message"


class _Wait:
    """One read of a request message in progress (guarded by ``MessageWaits._lock``)."""

    __slots__ = ("client", "context", "counted", "ended", "started")

    def __init__(self, context: grpc.ServicerContext, started: float) -> None:
        self.context = context
        self.started = started
        self.client = ""
        self.counted = False
        self.ended: tuple[grpc.StatusCode, str] | None = None


class MessageWaits:
    """The calls of one server waiting for their request message, and the watcher bounding them.

    ``share``: calls of one client address that may count as waiting at once; ``total``: calls
    of all clients together; ``timeout``: seconds a read may wait in all. ``start`` the watcher
    with the server and ``close`` it after.
    """

    def __init__(self, *, share: int, total: int, timeout: float) -> None:
        self._share = share
        self._total = total
        self._timeout = timeout
        self._lock = threading.Lock()
        # Reads in progress by id(), in the order they started: a sweep judges the oldest
        # first, so the calls counted against a share are the ones that have waited longest.
        self._open: dict[int, _Wait] = {}
        self._counted: dict[str, int] = {}  # reads counted as waiting, by client address
        self._counted_in_all = 0
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None
        self._ended: dict[str, int] = {}  # calls ended since the last summary, by reason
        self._summarised = time.monotonic()

    def start(self) -> None:
        """Start the watcher thread (once)."""
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="message-waits", daemon=True)
            self._watcher.start()

    def close(self) -> None:
        """Stop the watcher; reads still in progress then wait only for their call to end."""
        self._closed.set()
        if self._watcher is not None:
            self._watcher.join()

    def waiting_clients(self) -> dict[str, int]:
        """Client addresses with calls counted as waiting, and how many each (a copy)."""
        with self._lock:
            return dict(self._counted)

    def read(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        """The call's next request message; StopIteration when the client sent its last.

        Ended (DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED) when the watcher says so.
        """
        wait = _Wait(context, time.monotonic())
        ticket = id(wait)
        with self._lock:
            self._open[ticket] = wait
        try:
            request = next(requests, None)
        finally:
            with self._lock:
                del self._open[ticket]
                if wait.counted:
                    self._uncount(wait.client)
        if request is None:
            raise StopIteration
        ended = wait.ended
        if ended is not None:
            if request is _ENDED:
                context.abort(*ended)
            _clear_sentinel(context)  # the message won the race: no sentinel may stay behind
        return request

    def _count_ended(self, reason: str) -> None:
        """One call ended by the watcher (``_lock`` held): for the summary and the metric."""
        self._ended[reason] = self._ended.get(reason, 0) + 1
        metrics.count_request_wait_ended(reason)

    def _uncount(self, client: str) -> None:
        self._counted_in_all -= 1
        left = self._counted[client] - 1
        if left:
            self._counted[client] = left
        else:
            del self._counted[client]

    def _watch(self) -> None:
        while not self._closed.wait(_CROWDED_SWEEP_SECONDS if self._counted else _SWEEP_SECONDS):
            try:
                now = time.monotonic()
                self.sweep(now)
                if self._ended and now - self._summarised >= _LOG_EVERY_SECONDS:
                    self.summarise(now)
            except Exception:  # noqa: BLE001 - the watcher must outlive one bad sweep
                _log.exception("message_wait_sweep_failed")

    def summarise(self, now: float) -> None:
        """Log the calls ended since the last summary, by reason (one event, then reset)."""
        with self._lock:
            ended, self._ended = self._ended, {}
        self._summarised = now
        if ended:
            _log.warning("request_waits_ended", **ended)

    def sweep(self, now: float) -> None:
        """Count the reads past their grace, end those crowded out or past the timeout."""
        with self._lock:
            for wait in self._open.values():
                if wait.ended is None:
                    self._judge(wait, now - wait.started)
                if wait.ended is not None:
                    _wake(wait.context)  # again on every sweep until the thread has woken

    def _judge(self, wait: _Wait, waited: float) -> None:
        if waited >= self._timeout:
            wait.ended = (grpc.StatusCode.DEADLINE_EXCEEDED, message_too_late(self._timeout))
            self._count_ended("timeout")
        elif not wait.counted and waited >= CROWDED_GRACE_SECONDS:
            if not wait.client:
                wait.client = client_address(wait.context.peer())
            waiting = self._counted.get(wait.client, 0)
            if waiting >= self._share:
                wait.ended = (grpc.StatusCode.RESOURCE_EXHAUSTED, too_many_waiting(waiting))
                self._count_ended("client_share")
            elif self._counted_in_all >= self._total:
                wait.ended = (
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    too_many_waiting_in_all(self._counted_in_all),
                )
                self._count_ended("server_total")
            elif waited >= WAITING_GRACE_SECONDS:
                self._counted[wait.client] = waiting + 1
                self._counted_in_all += 1
                wait.counted = True


def _wake(context: grpc.ServicerContext) -> None:
    """Wake the thread reading ``context``'s request with the sentinel, or cancel the call."""
    state = getattr(context, "_state", None)
    condition = getattr(state, "condition", None)
    if state is None or condition is None or not hasattr(state, "request"):
        context.cancel()  # grpcio without the internals this relies on: end it all the same
        return
    with condition:
        if state.request is None or state.request is _ENDED:
            state.request = _ENDED
            condition.notify_all()


def _clear_sentinel(context: grpc.ServicerContext) -> None:
    state = getattr(context, "_state", None)
    if state is not None and getattr(state, "condition", None) is not None:
        with state.condition:
            if state.request is _ENDED:
                state.request = None


class SyncBridge(grpc.ServerInterceptor):
    """The boundary (:class:`BoundaryInterceptor`), with every request read through the waits.

    Unary-request methods are registered as request-streaming, so that grpcio starts their
    handler before the message arrives and the handler reads it with :meth:`MessageWaits.read`;
    request-streaming methods (reflection) read each message the same way. Health checks and
    reflection are bounded too: they are the calls an unauthenticated client reaches first.
    """

    def __init__(self, boundary: BoundaryInterceptor, waits: MessageWaits) -> None:
        self._boundary = boundary
        self._waits = waits
        self._bridged = WrappedHandlers()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return self._bridged.wrapped(handler_call_details.method, handler, self._bridge)

    def _bridge(self, method: str, handler: Handler) -> Handler:
        handler = self._boundary.wrap(method, handler)
        for kind, requests_of, request_streaming in _KINDS:
            behavior = getattr(handler, kind)
            if behavior is not None:
                return request_streaming(
                    _as_sent_by(behavior, _reading(behavior, requests_of, self._waits.read)),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler


#: :meth:`MessageWaits.read`, and what gives a behavior its requests through it (_one, _each).
Read = Callable[[Iterator[Any], grpc.ServicerContext], Any]
RequestsOf = Callable[[Read, Iterator[Any], grpc.ServicerContext], Any]
_T = TypeVar("_T")


def _as_sent_by(behavior: object, bridged: _T) -> _T:
    """Give ``bridged`` the streaming mode and pool that grpcio reads off ``behavior``.

    grpcio's sync server lets a response-streaming handler send through a callback instead of
    returning an iterator (``experimental_non_blocking``, which the broker's health ``Watch``
    uses: a watching client then holds no thread), and run in a pool of its own
    (``experimental_thread_pool``); both are attributes of the handler function. The bridged
    handler passes the callback on (``*callback``), so it must carry them too.
    """
    for name in ("experimental_non_blocking", "experimental_thread_pool"):
        if hasattr(behavior, name):
            setattr(bridged, name, getattr(behavior, name))
    return bridged


def _reading(
    behavior: Callable[..., Any], requests_of: RequestsOf, read: Read
) -> Callable[..., Any]:
    """``behavior`` as a request-streaming handler that reads its requests through ``read``.

    ``*callback`` is grpcio's ``send_response_callback`` for a non-blocking streaming handler
    (see :func:`_as_sent_by`), passed on as grpcio passes it.
    """

    def bridged(requests: Iterator[Any], context: grpc.ServicerContext, *callback: Any) -> Any:
        return behavior(requests_of(read, requests, context), context, *callback)

    return bridged


def _one(read: Read, requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
    """A unary call's one request message, or INVALID_ARGUMENT when the call had none."""
    try:
        return read(requests, context)
    except StopIteration:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, NO_MESSAGE)


def _each(read: Read, requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
    """A streaming call's request messages, each read within the waits' bounds."""
    while True:
        try:
            request = read(requests, context)
        except StopIteration:
            return
        yield request


#: Each kind of handler grpcio may hold: the requests its behavior takes (one message, or a
#: stream of them), and the request-streaming handler that starts it before the first arrives.
_KINDS: tuple[tuple[str, RequestsOf, Callable[..., Handler]], ...] = (
    ("unary_unary", _one, grpc.stream_unary_rpc_method_handler),
    ("unary_stream", _one, grpc.stream_stream_rpc_method_handler),
    ("stream_unary", _each, grpc.stream_unary_rpc_method_handler),
    ("stream_stream", _each, grpc.stream_stream_rpc_method_handler),
)

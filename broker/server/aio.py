"""Serve the broker's synchronous servicers from a ``grpc.aio`` event loop (``[server] aio``).

Why: grpcio's synchronous server waits for a unary call's request message inside a pool thread,
so a client that opens ``max_workers`` calls and never sends their message holds every thread
and the process stops answering, health checks included (SECURITY.md, "Known gaps"). grpc.aio
waits for messages on its event loop, which holds no thread: only a handler's own work runs in
the pool.

The servicers stay synchronous. grpc.aio can run a sync handler itself in its migration pool,
but the context it gives such a handler lacks what the boundary and the servicers rely on: it
has no ``abort_with_status`` nor ``is_active``; its ``add_callback`` returns None and its
callbacks run only after a unary handler has returned, never when the client cancels (so a
departed buyer would not stop the vendor call); and a streaming handler's steps run in whichever
pool threads are free, without the call's context variables (the principal, the log's bound
fields). So :class:`AioBridge` turns each synchronous handler into a coroutine that runs the
handler's steps in the pool itself, one ``contextvars.Context`` per call, with a
:class:`SyncContext`: ``grpc.ServicerContext`` mapped onto grpc.aio's context.

:class:`LoopServer` runs the grpc.aio server on an event loop of its own thread behind the
``grpc.Server`` interface, so ``BrokerServer.start/stop/serve_forever`` keep their contract.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import inspect
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, NoReturn, TypeVar

import grpc
import grpc.aio

from broker.logging import get_logger
from broker.server.interceptors import (
    PUBLIC_SERVICE_PREFIXES,
    BoundaryInterceptor,
    Handler,
    WrappedHandlers,
)
from broker.server.message_wait import (
    NO_MESSAGE,
    WAITING_GRACE_SECONDS,
    client_address,
    message_too_late,
    too_many_waiting,
)

_log = get_logger(__name__)

_T = TypeVar("_T")
_END = object()


class _Aborted(Exception):
    """Raised in the pool thread by ``abort``; the bridge sends the status from the loop."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple[Any, ...]) -> None:
        super().__init__("the RPC was aborted")
        self.code = code
        self.details = details
        self.trailing = trailing


class SyncContext(grpc.ServicerContext):
    """The synchronous servicer context, for one call served by grpc.aio.

    Its callbacks run once when the call ends on the loop (answered, aborted or cancelled by the
    client); after that ``is_active`` is False and ``add_callback`` refuses, as grpcio's sync
    server does. ``abort`` raises in the handler's thread and the bridge sends the status from
    the loop, so no pool thread waits on the loop.
    """

    def __init__(
        self, context: grpc.aio.ServicerContext[Any, Any], loop: asyncio.AbstractEventLoop
    ) -> None:
        self._context = context
        self._loop = loop
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] | None = []
        self._vars = contextvars.copy_context()
        self._step: concurrent.futures.Future[Any] | None = None

    # -- used by the bridge, on the loop ---------------------------------------------------

    def run(
        self, executor: concurrent.futures.Executor, fn: Callable[..., _T], *args: Any
    ) -> Awaitable[_T]:
        """Run one step of the handler in the pool, in this call's context variables."""
        self._step = executor.submit(self._vars.run, fn, *args)
        return asyncio.wrap_future(self._step, loop=self._loop)

    def terminate(self) -> None:
        """The call has ended: run its callbacks (once); later ones are refused."""
        with self._lock:
            callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks or ():
            try:
                callback()
            except Exception:  # noqa: BLE001 - one failing callback must not skip the others
                _log.exception("rpc_callback_failed")

    def close_after_step(self, executor: concurrent.futures.Executor, iterator: Any) -> None:
        """Close a streaming handler's generator in the pool once its running step is over.

        Its ``finally`` blocks then run (a stream's outcome is recorded, its ``rpc`` event
        logged as CANCELLED); a generator cannot be closed while another thread runs it.
        """

        def close(_: object = None) -> None:
            with contextlib.suppress(RuntimeError):  # the pool has shut down
                executor.submit(self._vars.run, iterator.close)

        step = self._step
        if step is None or step.done():
            close()
        else:
            step.add_done_callback(close)

    # -- grpc.ServicerContext, called from the handler's thread -----------------------------

    def is_active(self) -> bool:
        return self._callbacks is not None and not self._context.done()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        with self._lock:
            if self._callbacks is None:
                return False
            self._callbacks.append(callback)
            return True

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise _Aborted(code, details, ())

    def abort_with_status(self, status: grpc.Status) -> NoReturn:
        raise _Aborted(status.code, status.details, tuple(status.trailing_metadata))

    def time_remaining(self) -> float | None:  # type: ignore[override]  # None: no deadline
        return self._context.time_remaining()

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()

    def peer(self) -> str:
        return self._context.peer()

    def peer_identities(self) -> Any:
        return self._context.peer_identities()

    def peer_identity_key(self) -> str | None:
        return self._context.peer_identity_key()

    def auth_context(self) -> Any:
        return self._context.auth_context()

    def set_code(self, code: grpc.StatusCode) -> None:
        self._context.set_code(code)

    def set_details(self, details: str) -> None:
        self._context.set_details(details)

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self._context.set_trailing_metadata(trailing_metadata)

    def set_compression(self, compression: grpc.Compression) -> None:
        self._context.set_compression(compression)

    def send_initial_metadata(self, initial_metadata: Any) -> None:
        asyncio.run_coroutine_threadsafe(
            self._context.send_initial_metadata(initial_metadata), self._loop
        ).result()

    def cancel(self) -> bool:
        raise NotImplementedError("grpc.aio has no server-side cancel; the broker never uses it")


class _Wait:
    """One call waiting for its request message (``AioBridge._request``); used on the loop only."""

    __slots__ = ("client", "counted", "ended", "task", "timer")

    def __init__(self, client: str, task: asyncio.Task[Any] | None) -> None:
        self.client = client
        self.task = task
        self.counted = False
        self.ended: tuple[grpc.StatusCode, str] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def end(self, code: grpc.StatusCode, details: str) -> None:
        """Stop the wait: the read is cancelled, and the call then ends with this status."""
        self.ended = (code, details)
        if self.task is not None:
            self.task.cancel()


def _is_async(behavior: object) -> bool:
    return inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)


class AioBridge(grpc.aio.ServerInterceptor):
    """The boundary (:class:`BoundaryInterceptor`) for grpc.aio, and sync handlers run in a pool.

    At most ``max_running`` of the broker's calls run (or wait for a thread) at once; more are
    refused with RESOURCE_EXHAUSTED, as grpcio's ``maximum_concurrent_rpcs`` did for the sync
    server. Counted here, once a call's request has arrived, and not by grpc.aio, whose limit
    also counts calls still waiting for their request: stalled calls would fill it instead.
    Health checks and reflection are not counted, so they answer under load.

    The bridge reads each call's request message itself (``_request``): within
    ``message_timeout`` seconds, and with at most ``max_waiting_per_client`` calls of one client
    address waiting at once, so stalled calls can neither stay open for ever nor, from one
    client, fill grpc.aio's limit on open calls.

    Each method's bridged handler is built once and kept, as the boundary keeps its own.
    Client-streaming methods (only reflection, which is asynchronous here) pass through.
    """

    def __init__(
        self,
        boundary: BoundaryInterceptor,
        executor: concurrent.futures.Executor,
        *,
        max_running: int | None = None,
        message_timeout: float,
        max_waiting_per_client: int,
    ) -> None:
        self._boundary = boundary
        self._executor = executor
        self._max_running = max_running
        self._running = 0  # read and written on the loop only
        self._message_timeout = message_timeout
        self._max_waiting = max_waiting_per_client
        self._waiting: dict[str, int] = {}  # calls waiting for their message, by client; loop only
        self._bridged = WrappedHandlers()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return self._bridged.wrapped(handler_call_details.method, handler, self._bridge)

    def _bridge(self, method: str, handler: Handler) -> Handler:
        handler = self._boundary.wrap(method, handler)
        counted = not method.startswith(PUBLIC_SERVICE_PREFIXES)
        # Registered as request-streaming: grpc.aio then starts the bridge before the request
        # message arrives, and the bridge reads it itself, bounded in time and per client.
        if handler.unary_unary is not None and not _is_async(handler.unary_unary):
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.unary_unary, counted),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None and not _is_async(handler.unary_stream):
            return grpc.stream_stream_rpc_method_handler(
                self._stream(handler.unary_stream, counted),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    async def _request(self, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """The call's one request message, read within ``message_timeout`` seconds.

        A call whose message is not in ``WAITING_GRACE_SECONDS`` after the bridge starts counts
        as waiting for it: one client address may have at most ``max_waiting_per_client`` such
        calls (a client that sends its message with the call never counts, so stalled calls
        cannot crowd out the calls of others at the same address); one more is refused at once,
        and a call whose message has not come ``message_timeout`` seconds after the call is
        ended. Both get a status that says why, and their slot is free again. A call that ends
        without any message is INVALID_ARGUMENT, as grpcio's own unary handling refuses it.
        """
        wait = _Wait(client_address(context.peer()), asyncio.current_task())
        loop = asyncio.get_running_loop()
        wait.timer = loop.call_later(WAITING_GRACE_SECONDS, self._still_waiting, wait, loop)
        try:
            request = await context.read()
        except asyncio.CancelledError:
            if wait.ended is None:
                raise  # the client went away, or the server is stopping
            await context.abort(*wait.ended)
        finally:
            wait.timer.cancel()
            if wait.counted:
                left = self._waiting[wait.client] - 1
                if left:
                    self._waiting[wait.client] = left
                else:
                    del self._waiting[wait.client]
        if request is grpc.aio.EOF:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, NO_MESSAGE)
        return request

    def _still_waiting(self, wait: _Wait, loop: asyncio.AbstractEventLoop) -> None:
        """The grace is over and the message is not in: count the call, or refuse it."""
        waiting = self._waiting.get(wait.client, 0)
        if waiting >= self._max_waiting:
            wait.end(grpc.StatusCode.RESOURCE_EXHAUSTED, too_many_waiting(waiting))
            return
        self._waiting[wait.client] = waiting + 1
        wait.counted = True
        wait.timer = loop.call_later(
            max(0.0, self._message_timeout - WAITING_GRACE_SECONDS),
            wait.end,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            message_too_late(self._message_timeout),
        )

    async def _admit(self, context: grpc.aio.ServicerContext[Any, Any], counted: bool) -> bool:
        """Count a call in (True), or refuse it when ``max_running`` are running already."""
        if not counted:
            return False
        if self._max_running is not None and self._running >= self._max_running:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!"
            )
        self._running += 1
        return True

    def _unary(
        self, behavior: Callable[[Any, grpc.ServicerContext], Any], counted: bool
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
        executor = self._executor

        async def bridged(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            request = await self._request(context)
            admitted = await self._admit(context, counted)
            call = SyncContext(context, asyncio.get_running_loop())
            try:
                return await call.run(executor, behavior, request, call)
            except _Aborted as aborted:
                await context.abort(aborted.code, aborted.details, aborted.trailing)
            finally:
                self._running -= admitted
                call.terminate()

        return bridged

    def _stream(
        self, behavior: Callable[[Any, grpc.ServicerContext], Iterator[Any]], counted: bool
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]:
        executor = self._executor

        async def bridged(
            requests: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            request = await self._request(context)
            admitted = await self._admit(context, counted)
            call = SyncContext(context, asyncio.get_running_loop())
            iterator: Iterator[Any] | None = None
            try:
                iterator = await call.run(executor, lambda: iter(behavior(request, call)))
                while True:
                    item = await call.run(executor, next, iterator, _END)
                    if item is _END:
                        return
                    yield item
            except _Aborted as aborted:
                await context.abort(aborted.code, aborted.details, aborted.trailing)
            finally:
                self._running -= admitted
                call.terminate()
                if iterator is not None:
                    call.close_after_step(executor, iterator)

        return bridged


class LoopServer(grpc.Server):
    """A grpc.aio server on an event loop in its own thread, behind ``grpc.Server``'s interface.

    ``max_running``: calls that have their request and run or wait for a thread (the bridge's
    limit); ``max_open``: every open call, those still waiting for their request included
    (grpc.aio's ``maximum_concurrent_rpcs``), which bounds the memory that stalled calls hold;
    ``message_timeout`` and ``max_waiting_per_client``: see :class:`AioBridge`.
    Every call into the aio server is made on the loop's thread; ``stop`` returns an event that
    is set once the server has stopped and the loop has ended, as grpcio's sync server does.
    """

    def __init__(
        self,
        executor: concurrent.futures.ThreadPoolExecutor,
        boundary: BoundaryInterceptor,
        *,
        options: Sequence[tuple[str, Any]],
        max_running: int | None,
        max_open: int | None,
        message_timeout: float,
        max_waiting_per_client: int,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run_loop, name="rpc-loop", daemon=True)
        self._thread.start()
        self.aio: grpc.aio.Server = self.call_in_loop(
            lambda: grpc.aio.server(
                migration_thread_pool=executor,
                interceptors=[
                    AioBridge(
                        boundary,
                        executor,
                        max_running=max_running,
                        message_timeout=message_timeout,
                        max_waiting_per_client=max_waiting_per_client,
                    )
                ],
                options=options,
                maximum_concurrent_rpcs=max_open,
            )
        )

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        finally:
            self._loop.close()
            self._stopped.set()

    def call_in_loop(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the loop's thread and return its result."""

        async def call() -> _T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result()

    def _await(self, awaitable: Awaitable[_T]) -> _T:
        async def call() -> _T:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result()

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Any) -> None:
        self.call_in_loop(lambda: self.aio.add_generic_rpc_handlers(generic_rpc_handlers))

    def add_registered_method_handlers(self, service_name: str, method_handlers: Any) -> None:
        self.call_in_loop(
            lambda: self.aio.add_registered_method_handlers(service_name, method_handlers)
        )

    def add_insecure_port(self, address: str) -> int:
        return self.call_in_loop(lambda: self.aio.add_insecure_port(address))

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self.call_in_loop(lambda: self.aio.add_secure_port(address, server_credentials))

    def start(self) -> None:
        self._await(self.aio.start())

    def stop(self, grace: float | None) -> threading.Event:
        if self._loop.is_closed():
            return self._stopped
        future = asyncio.run_coroutine_threadsafe(self.aio.stop(grace), self._loop)
        # Runs on the loop's thread, or on this one if the server stopped already: thread-safe.
        future.add_done_callback(lambda _: self._loop.call_soon_threadsafe(self._loop.stop))
        return self._stopped

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

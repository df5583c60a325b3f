"""The one boundary where RPCs are authenticated, errors become statuses, and calls are logged.

``BoundaryInterceptor`` wraps every method handler of the broker's own services so that, in the
worker thread that serves the RPC:

1. the bearer token is verified and the principal is made available to the servicer through
   ``broker.server.context`` (health checking and reflection stay unauthenticated);
2. a ``BrokerError`` raised anywhere below becomes its gRPC status, with a
   ``google.rpc.ErrorInfo`` detail; a database that cannot be reached becomes UNAVAILABLE; any
   other exception becomes a bare INTERNAL whose cause goes only to the log;
3. a request whose bytes are not a valid message is refused with INVALID_ARGUMENT naming the
   message type (parsed here, after authentication, not by grpcio, which would answer INTERNAL);
4. exactly one structured ``rpc`` event is logged per call, with method, tenant, subject,
   status and latency, plus whatever the servicer bound (call id, model). Never a payload value.

Authentication happens in the worker thread, not in grpcio's polling thread, so token
verification runs in parallel across calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeAlias

import grpc
import sqlalchemy as sa
import structlog
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from broker.auth.principal import Principal
from broker.errors import (
    BrokerError,
    InvalidArgument,
    QuotaExceeded,
    Unauthenticated,
    Unavailable,
)
from broker.logging import get_logger
from broker.observability import metrics, tracing
from broker.observability.stages import stage
from broker.server.context import principal_var

_log = get_logger(__name__)

PUBLIC_SERVICE_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
ERROR_DOMAIN = "broker.v1"

Authenticator = Callable[[tuple[tuple[str, str | bytes], ...]], Principal]


Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_MAX_WRAPPED = 1_000  # methods whose wrapped handler is kept; the broker serves about 50


class WrappedHandlers:
    """Each method's wrapped handler, kept while the handler it wraps is the same object.

    grpc asks for a method's handler on every call; the servicers' handlers are built once, so
    a wrapper built from one can be kept too, keyed by method and by the identity of the handler
    it wraps. At most ``_MAX_WRAPPED`` methods are kept (the broker serves about 50).
    """

    def __init__(self) -> None:
        self._kept: dict[str, tuple[Handler, Handler]] = {}

    def __len__(self) -> int:
        return len(self._kept)

    def wrapped(
        self, method: str, handler: Handler, wrap: Callable[[str, Handler], Handler]
    ) -> Handler:
        """The wrapper of ``handler`` of ``method``: the one kept, or ``wrap``'s, then kept.

        Kept while there is room (``_MAX_WRAPPED`` methods).
        """
        kept = self._kept.get(method)
        if kept is not None and kept[0] is handler:
            return kept[1]
        wrapped = wrap(method, handler)
        if len(self._kept) < _MAX_WRAPPED:
            self._kept[method] = (handler, wrapped)
        return wrapped


class BoundaryInterceptor(grpc.ServerInterceptor):
    """Authenticate, map errors to statuses, and log one event per RPC.

    grpcio asks for the handler of every call (in its polling thread, before the call reaches
    a worker thread); the servicers' handlers are built once, so the wrapped handler of each is
    built once too and kept, keyed by method and by the identity of the handler it wraps.
    """

    def __init__(self, authenticate: Authenticator) -> None:
        self._authenticate = authenticate
        self._wrapped = WrappedHandlers()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return self.wrap(handler_call_details.method, handler)

    def wrap(self, method: str, handler: Handler) -> Handler:
        """``handler`` of ``method`` inside the boundary (built once per handler, then kept).

        The bridges (:mod:`broker.server.message_wait`, :mod:`broker.server.aio`) put their own
        handling around what this returns.
        """
        return self._wrapped.wrapped(method, handler, self._wrap)

    def _wrap(self, method: str, handler: Handler) -> Handler:
        if method.startswith(PUBLIC_SERVICE_PREFIXES):
            return handler
        # The request reaches the wrapper as raw bytes and is parsed inside the scope: grpcio's
        # own failed parse would answer a bare INTERNAL, unlogged and uncounted.
        parse = _RequestParser(handler.request_deserializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary, parse),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream, parse),
                response_serializer=handler.response_serializer,
            )
        return handler  # client-streaming methods: none exist in broker.v1

    def _wrap_unary(
        self,
        method: str,
        behavior: Callable[[Any, grpc.ServicerContext], Any],
        parse: _RequestParser,
    ) -> Callable[[bytes, grpc.ServicerContext], Any]:
        def wrapped(raw: bytes, context: grpc.ServicerContext) -> Any:
            with _RpcScope(self._authenticate, method, context) as scope:
                request = scope.run(lambda: parse(raw))
                return scope.run(lambda: behavior(request, context))

        return wrapped

    def _wrap_stream(
        self,
        method: str,
        behavior: Callable[[Any, grpc.ServicerContext], Iterator[Any]],
        parse: _RequestParser,
    ) -> Callable[[bytes, grpc.ServicerContext], Iterator[Any]]:
        def wrapped(raw: bytes, context: grpc.ServicerContext) -> Iterator[Any]:
            with _RpcScope(self._authenticate, method, context) as scope:
                request = scope.run(lambda: parse(raw))
                iterator = scope.run(lambda: iter(behavior(request, context)))
                while True:
                    item = scope.run(lambda: next(iterator, _END))
                    if item is _END:
                        return
                    yield item

        return wrapped


_END = object()


class _RequestParser:
    """Turns a request's bytes into its message, or INVALID_ARGUMENT naming the message type.

    Bytes that are not a valid serialised message (truncated varints, wrong wire types, invalid
    UTF-8 in a string field) are the caller's mistake, so they get a status saying what to send,
    after authentication, with the call's one log event and metric like any other refusal.
    """

    def __init__(self, deserializer: Callable[[bytes], Any] | None) -> None:
        self._deserializer = deserializer
        message_type = getattr(deserializer, "__self__", None)
        descriptor = getattr(message_type, "DESCRIPTOR", None)
        self._name = str(getattr(descriptor, "full_name", "request"))

    def __call__(self, raw: bytes) -> Any:
        if self._deserializer is None:
            return raw
        try:
            return self._deserializer(raw)
        except DecodeError as exc:
            raise InvalidArgument(
                f"the request is not a valid serialised {self._name} message",
                log_reason=f"undecodable request ({len(raw)} bytes)",
            ) from exc


class _RpcScope:
    """Everything the boundary does around one RPC, as a context manager."""

    def __init__(
        self, authenticate: Authenticator, method: str, context: grpc.ServicerContext
    ) -> None:
        self._authenticate = authenticate
        self._method = method
        self._context = context
        self._started = time.perf_counter()
        self._status = grpc.StatusCode.OK
        self._principal_token: Any = None
        self._tenant = ""
        self._span: tracing.RpcSpan | None = None

    def __enter__(self) -> _RpcScope:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(method=self._method)
        metadata = tuple(self._context.invocation_metadata())
        self._span = tracing.start_rpc_span(self._method, metadata)
        try:
            with stage("auth"):
                principal = self._authenticate(metadata)
        except Unauthenticated as exc:
            # __exit__ will not run for a scope that was never entered: finish here.
            self._status = exc.code
            self._finish()
            self._fail(exc)
        self._tenant = principal.tenant
        structlog.contextvars.bind_contextvars(tenant=principal.tenant, subject=principal.subject)
        self._principal_token = principal_var().set(principal)
        return self

    def run(self, step: Callable[[], Any]) -> Any:
        """Run one step of the servicer, translating its errors."""
        try:
            return step()
        except BrokerError as exc:
            self._fail(exc)
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            # The database is unreachable (stopped, restarting, cut off): the call was refused
            # before any answer, and a retry, maybe on another replica, is the caller's remedy.
            # The exception's text holds SQL parameters: only its type goes to the log.
            _log.error("rpc_database_unavailable", error=type(exc.orig or exc).__name__)
            self._fail(Unavailable("the broker cannot reach its database; retry shortly"))
        except Exception:  # noqa: BLE001 - the boundary: anything unexpected becomes INTERNAL
            _log.exception("rpc_internal_error")
            self._fail(BrokerError("internal error in the broker; the operator's log has details"))

    def _fail(self, exc: BrokerError) -> NoReturn:
        self._status = exc.code
        if exc.log_reason:
            structlog.contextvars.bind_contextvars(reason=exc.log_reason)
        self._context.abort_with_status(_to_status(exc))
        raise AssertionError("abort_with_status returned")  # pragma: no cover

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._principal_token is not None:
            principal_var().reset(self._principal_token)
        if exc_type is not None and self._status is grpc.StatusCode.OK:
            self._status = (
                grpc.StatusCode.CANCELLED
                if not self._context.is_active()
                else (grpc.StatusCode.UNKNOWN)
            )
        self._finish()

    def _finish(self) -> None:
        """The RPC's one log event, its metrics and the end of its span."""
        seconds = time.perf_counter() - self._started
        _log.info("rpc", status=self._status.name, latency_ms=round(seconds * 1000, 3))
        if metrics.enabled() or self._span is not None:
            bound = structlog.contextvars.get_contextvars()
            metrics.count_rpc(
                self._method, self._tenant, str(bound.get("model", "")), self._status.name, seconds
            )
            if self._span is not None:
                self._span.end(self._status.name, bound)
        structlog.contextvars.clear_contextvars()


def _to_status(exc: BrokerError) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(
        reason=type(exc).__name__, domain=ERROR_DOMAIN, metadata=dict(exc.details)
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    details = [detail]
    if isinstance(exc, QuotaExceeded):
        details.extend(_quota_details(exc))
    status = status_pb2.Status(code=exc.code.value[0], message=exc.message, details=details)
    result: grpc.Status = rpc_status.to_status(status)
    return result


def _quota_details(exc: QuotaExceeded) -> list[any_pb2.Any]:
    """``QuotaFailure`` (what is limited, and the message) and ``RetryInfo`` (when to retry)."""
    failure = error_details_pb2.QuotaFailure(
        violations=[
            error_details_pb2.QuotaFailure.Violation(subject=exc.subject, description=exc.message)
        ]
    )
    retry = error_details_pb2.RetryInfo()
    whole = int(exc.retry_after)
    retry.retry_delay.seconds = whole
    retry.retry_delay.nanos = int((exc.retry_after - whole) * 1_000_000_000)
    packed = []
    for message in (failure, retry):
        detail = any_pb2.Any()
        detail.Pack(message)
        packed.append(detail)
    return packed

"""The outbound unary call of the Open Inference runtime: blocking, yet cancellable.

Why not ``stub.future(...)``, the public cancellable call: grpcio runs every future on a channel
"spin" thread that it starts whenever no other future is in flight on the channel (so on every
call of a sequential caller) and that hands each answer over to the waiting thread. That costs
about twice the CPU of a blocking ``stub(request)`` (bench/README.md, issue 12), whose calling
thread waits on a completion queue of the call's own ("segregated call") with the GIL released.
The blocking call gives the caller no handle to cancel with, though, and a buyer who goes away
must cancel the vendor's call (``on_cancel``).

So ``SegregatedCaller`` does what grpcio's own blocking path does (``_UnaryUnaryMultiCallable.
_blocking`` in grpcio 1.85's ``grpc/_channel.py``), in two steps: it starts the call, hands the
call's ``cancel`` to ``on_cancel``, and only then waits. Cancelling is thread-safe in grpcio:
``SegregatedCall.cancel`` takes the channel's lock and is a no-op once the call has finished, so
a late or repeated cancel is harmless.

That path uses grpcio internals. ``caller_for`` takes it only on a grpcio release it was tested
with (``TESTED_GRPCIO``) whose internals are all there, and otherwise returns ``FutureCaller``
(the public future), so another grpcio costs CPU, never correctness or cancellation. Both
callers raise the same errors: ``grpc.RpcError`` (with ``code()`` and ``details()``) for a
failed call and ``CallCancelled`` for one cancelled here.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from typing import Any, Final, Protocol, TypeAlias

import grpc

from broker._proto.inference.v2 import grpc_predict_v2_pb2 as pb
from broker.runtimes.base import Canceller


def _import(name: str) -> Any:
    """A grpcio internal module, untyped on purpose; None when this grpcio has none."""
    try:
        return importlib.import_module(name)
    except ImportError:  # pragma: no cover - such a grpcio takes the future path
        return None


_grpc_channel = _import("grpc._channel")
_grpc_common = _import("grpc._common")
_cygrpc = _import("grpc._cython.cygrpc")

# The request is sent as the bytes ``encode_request`` wrote (no serializer): see oip_wire.
ModelInfer: TypeAlias = "grpc.UnaryUnaryMultiCallable[bytes, pb.ModelInferResponse]"
Metadata: TypeAlias = "tuple[tuple[str, str], ...] | None"


class CallCancelled(Exception):
    """The call was cancelled through the canceller handed to ``on_cancel``."""


class Caller(Protocol):
    """One unary ModelInfer call, whose canceller reaches ``on_cancel`` before the wait."""

    kind: str

    def __call__(
        self,
        request: bytes,
        *,
        timeout: float,
        metadata: Metadata,
        on_cancel: Callable[[Canceller], None] | None,
    ) -> pb.ModelInferResponse:
        """Send ``request``; return the answer or raise ``grpc.RpcError`` / ``CallCancelled``."""
        ...


class FutureCaller:
    """The public path: ``stub.future``, cancelled through the future."""

    kind = "future"

    def __init__(self, stub: ModelInfer) -> None:
        self._stub = stub

    def __call__(
        self,
        request: bytes,
        *,
        timeout: float,
        metadata: Metadata,
        on_cancel: Callable[[Canceller], None] | None,
    ) -> pb.ModelInferResponse:
        future = self._stub.future(request, timeout=timeout, metadata=metadata)
        if on_cancel is not None:
            try:
                on_cancel(lambda: _cancel_future(future))
            except BaseException:
                future.cancel()  # nobody will wait for this call
                raise
        try:
            return future.result()
        except grpc.FutureCancelledError as exc:
            raise CallCancelled from exc


def _cancel_future(future: grpc.Future[Any]) -> None:
    """Cancel the outbound RPC; a no-op once it has finished."""
    future.cancel()


_CANCELLED_DETAILS = "Locally cancelled by application!"  # grpcio's own wording


class SegregatedCaller:
    """grpcio's blocking path, split so the call's canceller exists before the wait."""

    kind = "segregated"

    def __init__(self, stub: Any) -> None:
        self._stub = stub
        self._channel = self._stub._channel
        self._method = self._stub._method
        self._method_name = self._method.decode("ascii")
        self._target_name = self._stub._target.decode("utf-8", "replace")
        self._handle = self._stub._registered_call_handle
        self._census = self._stub._context
        self._flags = _cygrpc.PropagationConstants.GRPC_PROPAGATE_DEFAULTS
        self._cancelled_code = _grpc_common.STATUS_CODE_TO_CYGRPC_STATUS_CODE[
            grpc.StatusCode.CANCELLED
        ]
        self._deserialize = self._stub._response_deserializer

    def __call__(
        self,
        request: bytes,
        *,
        timeout: float,
        metadata: Metadata,
        on_cancel: Callable[[Canceller], None] | None,
    ) -> pb.ModelInferResponse:
        state, operations, deadline, error = self._stub._prepare(
            request, timeout, metadata, None, None
        )
        if state is None:
            raise error
        state.rpc_start_time = time.perf_counter()  # as grpcio does, for its observability
        state.method = self._method_name
        state.target = self._target_name
        # The deadline as the future path sets it: the caller's remaining time, no more.
        call = self._channel.segregated_call(
            self._flags,
            self._method,
            None,
            deadline,
            metadata,
            None,
            ((operations, None),),
            self._census,
            self._handle,
        )
        cancelled: list[bool] = []
        if on_cancel is not None:
            cancelled_code = self._cancelled_code

            def cancel() -> None:
                cancelled.append(True)
                call.cancel(cancelled_code, _CANCELLED_DETAILS)

            try:
                on_cancel(cancel)
            except BaseException:
                # Nobody will wait for this call: cancel it and take its one event, which
                # frees its completion queue (grpcio frees it only when the event is taken).
                cancel()
                call.next_event()
                raise
        # One batch of six operations: a single event completes the call.
        _grpc_channel._handle_event(call.next_event(), state, self._deserialize)
        if state.code is grpc.StatusCode.OK:
            return state.response  # type: ignore[no-any-return]
        if cancelled and state.code is grpc.StatusCode.CANCELLED:
            raise CallCancelled
        raise _grpc_channel._InactiveRpcError(state)


_INTERNALS = (
    "_channel",
    "_method",
    "_target",
    "_registered_call_handle",
    "_context",
    "_response_deserializer",
    "_prepare",
)


#: grpcio releases whose internals ``SegregatedCaller`` was read against and tested with. The
#: attributes it uses could keep their names in a later release and change their meaning
#: (``_prepare``'s arguments, the batch ``_handle_event`` expects), so any other release takes
#: the public future path until someone reads its ``grpc/_channel.py`` and adds it here (the
#: test that expects the segregated caller then says so).
TESTED_GRPCIO: Final = ("1.85.",)


def _segregated_supported(stub: object) -> bool:
    """Whether this grpcio is a tested one and has what ``SegregatedCaller`` uses."""
    tested = grpc.__version__.startswith(TESTED_GRPCIO)
    if not tested or _grpc_channel is None or _grpc_common is None or _cygrpc is None:
        return False
    if not all(hasattr(_grpc_channel, name) for name in ("_handle_event", "_InactiveRpcError")):
        return False
    if not hasattr(_grpc_common, "STATUS_CODE_TO_CYGRPC_STATUS_CODE"):
        return False
    if not hasattr(_cygrpc, "PropagationConstants"):
        return False
    if not all(hasattr(stub, name) for name in _INTERNALS):
        return False
    return hasattr(getattr(stub, "_channel", None), "segregated_call")


def caller_for(stub: ModelInfer, *, segregated: bool = True) -> Caller:
    """The cheapest caller this grpcio supports for ``stub``; ``segregated=False`` forces the
    public future path (tests run both)."""
    if segregated and _segregated_supported(stub):
        try:
            return SegregatedCaller(stub)
        except (AttributeError, KeyError, TypeError):  # internals of another shape
            pass
    return FutureCaller(stub)

"""Dispatch to a remote model over the Open Inference Protocol (KServe V2) gRPC API.

Works with any server that speaks ``inference.GRPCInferenceService`` (MLServer, KServe, Triton);
``tests/integration/test_oip_runtime.py`` runs it against a real MLServer.

Why it is built this way:

- **One pooled channel per (target, TLS, CA)**, created on first use and shared by every call
  and thread: a gRPC channel multiplexes calls over one HTTP/2 connection, so a new channel per
  call would pay a TCP and TLS handshake each time.
- **The caller's remaining deadline is the call's timeout**, so a slow backend cannot hold a
  buyer's call beyond what the buyer asked for, and the backend sees the deadline too.
- **No retries**, not even gRPC's own (``grpc.enable_retries`` is 0): inference is not
  idempotent; a second attempt is the buyer's decision.
- **The request goes out as bytes**: ``encode_request`` writes the serialised
  ``ModelInferRequest`` directly (``oip_wire``), so no message is built only to be serialised.
- **Cancellation reaches the backend, without a thread per call**: the call is started as
  grpcio's blocking call is (a completion queue of its own, waited on by the calling thread)
  and its ``cancel`` is handed to ``on_cancel`` before the wait, so when the buyer goes away the
  outbound RPC is cancelled and the backend's context becomes inactive. ``stub.future`` did the
  same at twice the CPU (a channel thread per sequential call); it stays as the fallback when
  grpcio's internals are not the expected ones (``oip_call``).
- **Answers are bounded**: ``grpc.max_receive_message_length`` is ``max_answer_bytes``; a larger
  answer is the backend's fault (``BackendError``).

Status codes from the backend map as follows (messages name the model and the status code,
never the backend's details, which may echo payload values):

    UNAVAILABLE (incl. connection refused)  -> Unavailable        safe to retry
    DEADLINE_EXCEEDED                       -> DeadlineExceeded
    RESOURCE_EXHAUSTED from the backend     -> ResourceExhausted  back off and retry later
    RESOURCE_EXHAUSTED, answer too large    -> BackendError
    anything else (INVALID_ARGUMENT,        -> BackendError       "rejected" or "failed"
      INTERNAL, NOT_FOUND, ...)

A backend's RESOURCE_EXHAUSTED (load shedding) becomes ``ResourceExhausted`` rather than
``Unavailable`` because clients commonly retry UNAVAILABLE automatically and at once, which would
pile load onto a backend that just said it is overloaded. MLServer reports a wrong input shape as
INTERNAL: that is still the backend's verdict, so it is a ``BackendError`` too.

A call cancelled through ``on_cancel`` raises ``Cancelled``: the buyer is gone (its
deadline passed or it cancelled), nobody reads the answer, and the error only feeds the audit
entry and the logs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import grpc

from broker._proto.inference.v2 import grpc_predict_v2_pb2 as pb
from broker.config import BackendsConfig
from broker.errors import (
    BackendError,
    BrokerError,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    ResourceExhausted,
    Unavailable,
)
from broker.logging import get_logger
from broker.observability import tracing
from broker.registry.model import Endpoint, ModelVersion
from broker.runtimes.base import Canceller
from broker.runtimes.oip_call import CallCancelled, Caller, ModelInfer, caller_for
from broker.runtimes.oip_mapping import build_answer, encode_request

_log = get_logger(__name__)

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"

# gRPC's own wording for a message over the channel's receive limit, on our side of the wire.
_CLIENT_TOO_LARGE = "CLIENT: Received message larger than max"
_REJECTED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)


class _ChannelKey(NamedTuple):
    target: str
    tls: bool
    ca_pem: str


class OpenInferenceRuntime:
    """``Runtime`` for models served over the Open Inference Protocol gRPC API.

    Thread-safe: one instance serves the whole process. ``close()`` closes every pooled channel;
    calls in flight then fail with ``Unavailable``.
    """

    def __init__(
        self, config: BackendsConfig | None = None, *, segregated_calls: bool = True
    ) -> None:
        """``segregated_calls=False`` forces the public ``stub.future`` path (``oip_call``)."""
        self._config = config or BackendsConfig()
        self._segregated = segregated_calls
        self._lock = threading.Lock()
        self._channels: dict[_ChannelKey, grpc.Channel] = {}
        self._callers: dict[_ChannelKey, Caller] = {}
        self._closed = False

    def invoke(
        self,
        model: ModelVersion,
        payload: dict[str, Any],
        *,
        timeout: float,
        call_id: str,
        on_cancel: Callable[[Canceller], None] | None = None,
        tenant: str = "",
    ) -> dict[str, Any]:
        """Run one inference on ``model``'s endpoint within ``timeout`` seconds.

        ``tenant`` is not sent anywhere: a remote endpoint learns nothing about the buyer.
        """
        endpoint = model.endpoint
        if endpoint is None or not endpoint.target:
            raise FailedPrecondition(f"model {model.ref} has no Open Inference endpoint")
        request = encode_request(
            model.oip_mapping,
            payload,
            model_name=endpoint.remote_model or model.name,
            model_version=endpoint.remote_version,
            request_id=call_id,
        )
        if timeout <= 0:
            raise DeadlineExceeded(f"no time left to call model {model.ref}")
        caller = self._caller(endpoint)
        started = time.monotonic()
        try:
            response = caller(
                request,
                timeout=timeout,
                metadata=tracing.outgoing_metadata(),
                on_cancel=on_cancel,
            )
        except CallCancelled as exc:
            self._log_failure(model, call_id, "CANCELLED", started)
            raise Cancelled(
                f"call to model {model.ref} was cancelled: the caller went away"
            ) from exc
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            self._log_failure(model, call_id, code.name, started)
            raise self._map_error(model, exc, code) from exc
        elapsed = time.monotonic() - started
        if elapsed > timeout:
            # gRPC's deadline timer has some slack, and an answer that lands after the caller's
            # deadline reaches nobody: report the deadline, as the caller's side already has.
            self._log_failure(model, call_id, "DEADLINE_EXCEEDED", started)
            raise DeadlineExceeded(f"model {model.ref} did not answer within the caller's deadline")
        _log.debug(
            "oip_call_done",
            call_id=call_id,
            model=model.ref,
            latency_ms=round(elapsed * 1000, 3),
        )
        return build_answer(model.oip_mapping, response)

    def close(self) -> None:
        """Close every pooled channel; the runtime refuses calls afterwards."""
        with self._lock:
            self._closed = True
            channels = list(self._channels.values())
            self._channels.clear()
            self._callers.clear()
        for channel in channels:
            channel.close()

    def _caller(self, endpoint: Endpoint) -> Caller:
        key = _ChannelKey(endpoint.target, endpoint.tls, endpoint.tls_ca_pem)
        with self._lock:
            if self._closed:
                raise Unavailable("the Open Inference runtime is shut down")
            caller = self._callers.get(key)
            if caller is None:
                channel = self._open_channel(key)
                stub: ModelInfer = channel.unary_unary(
                    MODEL_INFER,
                    request_serializer=None,
                    response_deserializer=pb.ModelInferResponse.FromString,
                    # As the generated stub does: the channel registers the method once.
                    _registered_method=True,  # type: ignore[call-arg]
                )
                caller = caller_for(stub, segregated=self._segregated)
                self._channels[key] = channel
                self._callers[key] = caller
            return caller

    def _open_channel(self, key: _ChannelKey) -> grpc.Channel:
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", self._config.max_answer_bytes),
            ("grpc.enable_retries", 0),
            # gRPC takes the minimum reconnect backoff as the minimum time it gives one
            # connection attempt; the call's own deadline still bounds every call.
            ("grpc.min_reconnect_backoff_ms", int(self._config.connect_timeout_seconds * 1000)),
        ]
        if not key.tls:
            return grpc.insecure_channel(key.target, options=options)
        roots = key.ca_pem.encode("ascii") if key.ca_pem else None  # None: system trust store
        credentials = grpc.ssl_channel_credentials(root_certificates=roots)
        return grpc.secure_channel(key.target, credentials, options=options)

    def _map_error(
        self, model: ModelVersion, exc: grpc.RpcError, code: grpc.StatusCode
    ) -> BrokerError:
        """Translate the outbound call's status; never copy the backend's details."""
        ref = model.ref
        if self._closed:
            return Unavailable("the Open Inference runtime is shut down")
        if code is grpc.StatusCode.UNAVAILABLE:
            return Unavailable(f"model backend {ref} is unreachable")
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded(f"model {ref} did not answer within the caller's deadline")
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            details = (exc.details() if isinstance(exc, grpc.Call) else None) or ""
            if _CLIENT_TOO_LARGE in details:
                limit = self._config.max_answer_bytes
                return BackendError(f"model backend {ref} sent an answer over {limit} bytes")
            return ResourceExhausted(
                f"model backend {ref} is overloaded (RESOURCE_EXHAUSTED); retry later"
            )
        verb = "rejected" if code in _REJECTED else "failed"
        return BackendError(f"model backend {ref} {verb} the call ({code.name})")

    @staticmethod
    def _log_failure(model: ModelVersion, call_id: str, code: str, started: float) -> None:
        _log.warning(
            "oip_call_failed",
            call_id=call_id,
            model=model.ref,
            status=code,
            latency_ms=round((time.monotonic() - started) * 1000, 3),
        )

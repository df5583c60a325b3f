"""``broker.v1.Broker``: the buyer-facing servicer. It translates protobuf and delegates."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping

import grpc

from broker._proto.broker.v1 import broker_pb2, broker_pb2_grpc
from broker.audit.store import Receipt
from broker.calls.invoke import CallRequest, Invoker
from broker.calls.payload import (
    JsonObject,
    PayloadLimits,
    dump_json,
    parse_json_payload,
    parse_struct_payload,
    to_struct,
)
from broker.calls.stream import StreamDelta, Streamer, StreamEvent, StreamOpened, StreamSummary
from broker.enforce.enforcer import FieldDecision
from broker.errors import FailedPrecondition, InvalidArgument
from broker.registry.convert import catalog_model_to_proto
from broker.registry.store import RegistryStore
from broker.server.context import current_principal

MAX_LABEL_KEYS = 1_000


class BrokerServicer(broker_pb2_grpc.BrokerServicer):
    """Invoke models, preview policies and browse the catalogue."""

    def __init__(
        self,
        invoker: Invoker,
        store: RegistryStore,
        limits: PayloadLimits,
        *,
        log_origin: str,
        streamer: Streamer | None = None,
    ) -> None:
        self._streamer = streamer
        self._invoker = invoker
        self._store = store
        self._limits = limits
        self._log_origin = log_origin

    def _receipt(self, receipt: Receipt | None, intent_index: int) -> broker_pb2.AuditReceipt:
        if receipt is None:
            return broker_pb2.AuditReceipt()
        return broker_pb2.AuditReceipt(
            leaf_index=receipt.leaf_index,
            entry_hash=receipt.entry_hash.hex(),
            intent_leaf_index=intent_index,
            log_origin=self._log_origin,
        )

    def Invoke(  # noqa: N802 - gRPC method name
        self, request: broker_pb2.InvokeRequest, context: grpc.ServicerContext
    ) -> broker_pb2.InvokeResponse:
        """Call a model with the request's payload and return its answer."""
        principal = current_principal()
        call = self._call_request(request)
        result = self._invoker.invoke(
            principal,
            call,
            time_remaining=context.time_remaining(),
            on_cancel=lambda cancel: _on_termination(context, cancel),
        )
        response = broker_pb2.InvokeResponse(
            call_id=result.call_id,
            model=result.model.ref,
            decisions=_decisions_to_proto(result.decisions),
            policy_revision=result.policy_revision,
            restored_values=result.restored_values,
            retained_record_ids=list(result.retained_record_ids),
            receipt=self._receipt(result.receipt, result.intent_leaf_index),
        )
        if request.WhichOneof("payload") == "struct":
            response.struct.CopyFrom(to_struct(result.answer))
        else:
            response.json = dump_json(result.answer)
        return response

    def InvokeStream(  # noqa: N802 - gRPC method name
        self, request: broker_pb2.InvokeRequest, context: grpc.ServicerContext
    ) -> Iterator[broker_pb2.InvokeStreamChunk]:
        """Call a chat model and stream its answer: decisions, deltas, then a summary.

        The request is parsed and checked before the first message, so a malformed one fails
        without a stream. A buyer who goes away cancels the vendor request (``on_cancel``) and
        closes the event iterator, which records the outcome as CANCELLED.
        """
        if self._streamer is None:
            raise FailedPrecondition("this broker does not serve streamed calls")
        events = self._streamer.stream(
            current_principal(),
            self._call_request(request),
            time_remaining=context.time_remaining(),
            on_cancel=lambda cancel: _on_termination(context, cancel),
        )
        try:
            for event in events:
                yield self._stream_chunk(event)
        finally:
            events.close()  # type: ignore[attr-defined]  # a generator

    def _stream_chunk(self, event: StreamEvent) -> broker_pb2.InvokeStreamChunk:
        if isinstance(event, StreamDelta):
            return broker_pb2.InvokeStreamChunk(delta=dump_json(event.chunk))
        if isinstance(event, StreamOpened):
            return broker_pb2.InvokeStreamChunk(
                decisions=broker_pb2.StreamDecisions(
                    call_id=event.call_id,
                    model=event.model.ref,
                    decisions=_decisions_to_proto(event.decisions),
                    policy_revision=event.policy_revision,
                )
            )
        return broker_pb2.InvokeStreamChunk(summary=self._summary(event))

    def _summary(self, event: StreamSummary) -> broker_pb2.StreamSummary:
        summary = broker_pb2.StreamSummary(
            call_id=event.call_id,
            model=event.model.ref,
            policy_revision=event.policy_revision,
            restored_values=event.restored_values,
            delta_chunks=event.delta_chunks,
            finish_reason=event.finish_reason,
            receipt=self._receipt(event.receipt, event.intent_leaf_index),
            entity_actions=dict(event.entity_actions),
            retained_record_ids=list(event.retained_record_ids),
        )
        if event.usage is not None:
            summary.usage.CopyFrom(broker_pb2.StreamUsage(**event.usage.as_audit()))
        return summary

    def Preview(  # noqa: N802 - gRPC method name
        self, request: broker_pb2.PreviewRequest, context: grpc.ServicerContext
    ) -> broker_pb2.PreviewResponse:
        """Say what Invoke would do to each field, without calling the model."""
        result = self._invoker.preview(current_principal(), self._call_request(request))
        return broker_pb2.PreviewResponse(
            allow=result.plan.allow,
            reasons=list(result.plan.reasons),
            decisions=_decisions_to_proto(result.decisions),
            model=result.model.ref,
            policy_revision=result.plan.revision,
            request_ttl_s=result.plan.retention.request_ttl_s,
            response_ttl_s=result.plan.retention.response_ttl_s,
            unmatched_label_keys=list(result.unmatched_label_keys),
            receipt=self._receipt(result.receipt, -1),
        )

    def ListModels(  # noqa: N802 - gRPC method name
        self, request: broker_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> broker_pb2.ListModelsResponse:
        """Page through the listed models of every vendor (any authenticated caller)."""
        current_principal()
        models, next_token = self._store.list_catalog(
            request.vendor or None, request.page_size, request.page_token
        )
        return broker_pb2.ListModelsResponse(
            models=[catalog_model_to_proto(model) for model in models],
            next_page_token=next_token,
        )

    def _call_request(
        self, request: broker_pb2.InvokeRequest | broker_pb2.PreviewRequest
    ) -> CallRequest:
        if not request.model:
            raise InvalidArgument("model is missing: name it as vendor/name@version")
        return CallRequest(
            model_ref=request.model,
            payload=self._payload(request),
            purpose=request.purpose,
            labels=_labels(request.labels),
        )

    def _payload(self, request: broker_pb2.InvokeRequest | broker_pb2.PreviewRequest) -> JsonObject:
        kind = request.WhichOneof("payload")
        if kind == "json":
            return parse_json_payload(request.json, self._limits)
        if kind == "struct":
            return parse_struct_payload(request.struct, self._limits)
        raise InvalidArgument("payload is missing: set `json` (JSON bytes) or `struct`")


def _labels(raw: Mapping[str, broker_pb2.LabelList]) -> dict[str, tuple[str, ...]]:
    if len(raw) > MAX_LABEL_KEYS:
        raise InvalidArgument(f"labels names more than {MAX_LABEL_KEYS} fields")
    return {path: tuple(entry.labels) for path, entry in raw.items()}


def _decisions_to_proto(decisions: Iterable[FieldDecision]) -> list[broker_pb2.FieldDecision]:
    """The decisions as messages; the caller's message copies them (they are shared, see below).

    A call's decisions repeat from call to call (same shape, same policy), and building a
    message from Python costs about 2 µs against a fraction of that to copy one, so messages are
    cached per decision. Paths and labels come from the buyer, so only decisions with short ones
    are cached, in a bounded cache: memory stays small whatever buyers send.
    """
    messages: list[broker_pb2.FieldDecision] = []
    for d in decisions:
        found = _BY_IDENTITY.get(id(d))
        if found is not None and found[0] is d:
            messages.append(found[1])
        elif len(d.path) + sum(map(len, d.labels)) <= _CACHED_TEXT_CHARS:
            message = _cached_decision(d)
            if len(_BY_IDENTITY) >= _IDENTITY_ENTRIES:
                _BY_IDENTITY.clear()
            _BY_IDENTITY[id(d)] = (d, message)
            messages.append(message)
        else:
            messages.append(_decision_message(d))
    return messages


_CACHED_TEXT_CHARS = 512  # path and labels of one cached decision, at most
# The enforcer shares the decision objects of plain fields between calls
# (``broker.enforce.enforcer._plain_decision``), so most are found here by identity, without
# hashing a dataclass; each entry holds its decision, so an id is not reused while it exists.
_IDENTITY_ENTRIES = 4096
_BY_IDENTITY: dict[int, tuple[FieldDecision, broker_pb2.FieldDecision]] = {}


def _decision_message(d: FieldDecision) -> broker_pb2.FieldDecision:
    return broker_pb2.FieldDecision(
        direction=d.direction,
        path=d.path,
        labels=list(d.labels),
        action=d.action,
        entities=[
            broker_pb2.EntityDecision(label=e.label, action=e.action, count=e.count)
            for e in d.entities
        ],
    )


# Never mutate what this returns: protobuf copies a message passed to a constructor or to
# ``extend``, so sharing the cached ones is safe.
_cached_decision = functools.lru_cache(maxsize=4096)(_decision_message)


def _on_termination(context: grpc.ServicerContext, cancel: Callable[[], None]) -> None:
    """Run ``cancel`` when the RPC ends, so a buyer who goes away stops the backend call too.

    grpcio calls RPC callbacks on every termination; cancelling a finished call is a no-op.
    A callback added after the RPC ended is refused (``add_callback`` returns False) and never
    called: the buyer left before the vendor call started, so it is cancelled at once
    (``broker.runtimes.base``: "the server should call the canceller at once").
    """
    if not context.add_callback(cancel):
        cancel()

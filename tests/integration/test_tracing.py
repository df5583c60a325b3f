"""OpenTelemetry: the buyer's trace goes through the broker to the vendor, stage by stage.

A real OTLP/gRPC receiver (the collector's own service, from the official protobuf definitions
in ``opentelemetry-proto``) runs in the test; the broker exports to it. The buyer sends a W3C
``traceparent``; the broker's spans must continue that trace, each stage a child of the call's
span, and the model backend must receive the trace in its metadata. No payload value may be in
any span.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import orjson
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from broker._proto.broker.v1 import broker_pb2
from tests.integration.harness import FakeBackend, echo_model, start_broker

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"


@dataclass
class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every exported request (raw, to scan for canaries) and its spans."""

    raw: list[bytes] = field(default_factory=list)
    spans: list[trace_pb2.Span] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self.lock:
            self.raw.append(request.SerializeToString())
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    self.spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    servicer = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(0)


def attribute(span: trace_pb2.Span, key: str) -> str:
    return next((a.value.string_value for a in span.attributes if a.key == key), "")


def test_a_call_is_one_trace_from_the_buyer_through_each_stage_to_the_vendor(
    tmp_path: Path, backend: FakeBackend, receiver: tuple[Receiver, int]
) -> None:
    spans, port = receiver
    canary = f"CANARY-{uuid.uuid4().hex}"
    broker = start_broker(
        tmp_path / "var",
        f"sqlite:///{tmp_path / 'b.db'}",
        BROKER__TRACING__OTLP_ENDPOINT=f"127.0.0.1:{port}",
    )
    try:
        broker.client("acme-models", "vendor").register_model(echo_model(backend.target))
        metadata = (
            ("authorization", f"Bearer {broker.token('bank', 'buyer')}"),
            ("traceparent", f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"),
        )
        reply = broker.client("bank", "buyer").broker.Invoke(
            broker_pb2.InvokeRequest(
                model="acme-models/echo@1.0.0", json=orjson.dumps({"text": canary})
            ),
            metadata=metadata,
            timeout=10,
        )
        assert orjson.loads(reply.json) == {"echo": canary}
    finally:
        broker.stop()  # flushes the batch of spans

    ours = [s for s in spans.spans if s.trace_id.hex() == TRACE_ID]
    (call,) = [s for s in ours if s.name == "broker.v1.Broker/Invoke"]
    assert call.parent_span_id.hex() == PARENT_SPAN_ID
    assert call.kind == trace_pb2.Span.SPAN_KIND_SERVER
    assert attribute(call, "broker.tenant") == "bank"
    assert attribute(call, "broker.model") == "acme-models/echo@1.0.0"
    assert attribute(call, "broker.call_id") == reply.call_id
    assert attribute(call, "rpc.grpc.status_code") == "OK"
    children = {s.name: s for s in ours if s.parent_span_id == call.span_id}
    expected = {"auth", "resolve", "classify", "decide", "enforce", "audit_intent", "dispatch"}
    assert expected | {"restore", "audit_outcome"} <= set(children)

    # The vendor got the trace, with the dispatch span as the parent of its own work.
    (sent,) = backend.log.metadata
    version, trace_id, parent_id, flags = sent["traceparent"].split("-")
    assert (version, trace_id, parent_id, flags) == (
        "00",
        TRACE_ID,
        children["dispatch"].span_id.hex(),
        "01",
    )

    assert all(canary.encode() not in raw for raw in spans.raw)  # no payload value, anywhere


def test_without_an_endpoint_no_span_is_made_and_no_trace_is_sent_on(
    tmp_path: Path, backend: FakeBackend
) -> None:
    broker = start_broker(tmp_path / "var", f"sqlite:///{tmp_path / 'b.db'}")
    try:
        broker.client("acme-models", "vendor").register_model(echo_model(backend.target))
        broker.client("bank", "buyer").invoke("acme-models/echo@1.0.0", {"text": "x"})
    finally:
        broker.stop()
    assert "traceparent" not in backend.log.metadata[0]

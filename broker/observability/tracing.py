"""OpenTelemetry traces: a span per RPC, a child span per stage, the trace passed to the vendor.

Off unless ``[tracing] otlp_endpoint`` is set. Then every RPC of the broker's own services is a
SERVER span named after its method, continuing the buyer's trace when the call carries a W3C
``traceparent`` (gRPC metadata), with a child span per stage of the call
(:mod:`broker.observability.stages`). The model call carries the trace on: ``traceparent`` in
the Open Inference Protocol call's metadata, or as an HTTP header to an OpenAI-compatible
endpoint, so the vendor's spans join the same trace.

What a span holds: the method, the tenant, the model reference, the gRPC status code, the call
id. Never a payload value, never a token: attributes are set here and nowhere else, from names
the broker already logs.

Spans go to an OTLP/gRPC collector in batches from a background thread (the SDK's
``BatchSpanProcessor``): a slow or absent collector costs the call path nothing but a queue
append, and spans beyond the queue are dropped, never blocking a call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from contextlib import AbstractContextManager
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from broker.observability import stages

_PROPAGATOR: Final = TraceContextTextMapPropagator()
_TRACER_NAME: Final = "model-broker"


class _State:
    provider: TracerProvider | None = None
    tracer: trace.Tracer | None = None


_state = _State()


def configure(
    endpoint: str, *, service_name: str = "model-broker", sample_ratio: float = 1.0
) -> None:
    """Send spans to the OTLP/gRPC collector at ``endpoint`` (``host:port``, plaintext)."""
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: service_name}),
        sampler=ParentBasedTraceIdRatio(sample_ratio),
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint, insecure=True)))
    _state.provider = provider
    _state.tracer = provider.get_tracer(_TRACER_NAME)
    stages.set_span_factory(_stage_span)


def shutdown() -> None:
    """Flush the spans still queued and stop tracing (at the end of a server's life)."""
    provider = _state.provider
    _state.provider = _state.tracer = None
    stages.set_span_factory(None)
    if provider is not None:
        provider.shutdown()


def enabled() -> bool:
    """Whether spans are being made in this process."""
    return _state.tracer is not None


def _stage_span(name: str) -> AbstractContextManager[Span]:
    tracer = _state.tracer
    assert tracer is not None  # stages only asks while tracing is configured
    return tracer.start_as_current_span(name)


class RpcSpan:
    """The SERVER span of one RPC, current for the RPC's thread until :meth:`end`."""

    __slots__ = ("_span", "_token")

    def __init__(self, method: str, metadata: Iterable[tuple[str, str | bytes]]) -> None:
        tracer = _state.tracer
        assert tracer is not None
        carrier = {key: value for key, value in metadata if isinstance(value, str)}
        parent = _PROPAGATOR.extract(carrier)
        service, _, rpc_method = method.strip("/").rpartition("/")
        self._span = tracer.start_span(
            method.strip("/"),
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc_method},
        )
        self._token = otel_context.attach(trace.set_span_in_context(self._span, parent))

    def end(self, code: str, attributes: Mapping[str, object]) -> None:
        """Close the span with the RPC's status and its value-free attributes."""
        span = self._span
        for key in ("tenant", "model", "call_id", "policy_revision"):
            value = attributes.get(key)
            if isinstance(value, str) and value:
                span.set_attribute(f"broker.{key}", value)
        span.set_attribute("rpc.grpc.status_code", code)
        if code not in ("OK", "CANCELLED"):
            span.set_status(Status(StatusCode.ERROR, code))
        span.end()
        otel_context.detach(self._token)


def start_rpc_span(method: str, metadata: Iterable[tuple[str, str | bytes]]) -> RpcSpan | None:
    """A span for one RPC when tracing is on, else ``None`` (nothing to do)."""
    if _state.tracer is None:
        return None
    return RpcSpan(method, metadata)


def inject(carrier: MutableMapping[str, str]) -> None:
    """Add ``traceparent`` (and ``tracestate``) of the current span to an outgoing call's
    headers or metadata; nothing when tracing is off."""
    if _state.tracer is not None:
        _PROPAGATOR.inject(carrier)


def outgoing_metadata() -> tuple[tuple[str, str], ...] | None:
    """gRPC metadata carrying the current trace, or ``None`` when tracing is off."""
    if _state.tracer is None:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return tuple(carrier.items()) or None

"""A serialised ``InvokeRequest`` -> payload (JSON bytes or ``google.protobuf.Struct``) -> labels
-> classification, as ``BrokerService`` takes one apart.

The wire bytes are what gRPC hands the servicer, so this covers the Struct path end to end:
deep ``Struct``/``ListValue`` nesting, a ``Value`` with no kind set, NaN and infinite doubles,
strings protobuf accepts, the label map, and the size, depth and field limits.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from tests.fuzz.harnesses._support import instrumented, main

with instrumented():
    from broker._proto.broker.v1 import broker_pb2
    from broker.calls.payload import PayloadLimits, parse_json_payload, parse_struct_payload
    from broker.classify.classifier import classify
    from broker.errors import InvalidArgument
    from broker.server.broker_service import _labels

#: ``DecodeError``: the bytes are not an ``InvokeRequest`` (gRPC's deserialiser refuses them
#: before the servicer runs). ``InvalidArgument``: the broker's answer to a bad payload or label.
EXPECTED = (DecodeError, InvalidArgument)

LIMITS = PayloadLimits(max_bytes=64 * 1024, max_depth=64, max_fields=2_000)


def fuzz_one(data: bytes) -> None:
    """Decode one request and classify its payload with its labels."""
    try:
        request = broker_pb2.InvokeRequest.FromString(data)
        kind = request.WhichOneof("payload")
        if kind == "json":
            payload = parse_json_payload(request.json, LIMITS)
        elif kind == "struct":
            payload = parse_struct_payload(request.struct, LIMITS)
        else:
            return
        result = classify(payload, buyer_labels=_labels(request.labels))
    except EXPECTED:
        return
    assert len(result.fields) <= LIMITS.max_fields


if __name__ == "__main__":
    main(fuzz_one)

"""A backend's ``ModelInferResponse`` bytes -> the JSON answer the mapping describes.

The first input byte picks one of a few mappings (all outputs by name; outputs placed at
pointers, squeezed or not); the rest is the response as it arrives from the network. The
answer must then be serialisable and classifiable, as the broker does next with it.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from tests.fuzz.harnesses._support import instrumented, main

with instrumented():
    from broker._proto.inference.v2 import grpc_predict_v2_pb2 as pb
    from broker.calls.payload import dump_json
    from broker.classify.classifier import classify
    from broker.errors import BackendError
    from broker.registry.model import OipMapping, TensorInput, TensorOutput
    from broker.runtimes.oip_mapping import build_answer

#: ``DecodeError``: not a ``ModelInferResponse`` (gRPC's deserialiser refuses it).
#: ``BackendError``: the broker's documented answer to a malformed backend response.
EXPECTED = (DecodeError, BackendError)

_INPUTS = (TensorInput("x", "FP32", (-1,), path="/x"),)
MAPPINGS = (
    OipMapping(inputs=_INPUTS),
    OipMapping(inputs=_INPUTS, outputs=(TensorOutput("y", "/result/y", squeeze=True),)),
    OipMapping(
        inputs=_INPUTS,
        outputs=(
            TensorOutput("y", "/result/0"),
            TensorOutput("probabilities", "/result/1", squeeze=True),
            TensorOutput("label"),
        ),
    ),
)


def fuzz_one(data: bytes) -> None:
    """Decode one response with one mapping; the answer must serialise and classify."""
    if not data:
        return
    mapping = MAPPINGS[data[0] % len(MAPPINGS)]
    try:
        answer = build_answer(mapping, pb.ModelInferResponse.FromString(data[1:]))
    except EXPECTED:
        return
    assert isinstance(answer, dict)
    dump_json(answer)
    classify(answer)


if __name__ == "__main__":
    main(fuzz_one)

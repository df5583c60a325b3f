"""A vendor's tensor mapping and a buyer's payload -> ``ModelInferRequest`` bytes.

The input is ``<mapping JSON>\\x00<payload JSON>``. The mapping JSON has the registry's form
(``{"inputs": [{"name", "datatype", "shape", "path" | "paths"}], "outputs": [{"name", "path",
"squeeze"}]}``); one that does not even have that form stands for one of three fixed mappings,
so the payload side is fuzzed on its own too. A mapping the registry accepts must compile
(the registry is where a vendor learns that a mapping can never work), and every request the
broker writes must parse back with one element per cell of its tensor's shape.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from tests.fuzz.harnesses._support import instrumented, main

with instrumented():
    from broker._proto.inference.v2 import grpc_predict_v2_pb2 as pb
    from broker.errors import InvalidArgument
    from broker.registry.model import (
        Endpoint,
        ModelVersion,
        OipMapping,
        Runtime,
        TensorInput,
        TensorOutput,
    )
    from broker.registry.validation import validate_model
    from broker.runtimes.oip_mapping import (
        check_registered_mapping,
        encode_request,
        validate_mapping,
    )
    from broker.runtimes.oip_tensors import DATATYPES

#: ``InvalidArgument``: the registry refuses the mapping, or the payload does not fit it.
EXPECTED = (InvalidArgument,)

FIXED = (
    OipMapping(inputs=(TensorInput("input", "FP32", (1, 4), path="/features"),)),
    OipMapping(
        inputs=(
            TensorInput("ids", "INT64", (3,), paths=("/a", "/b/0", "/c~1d")),
            TensorInput("text", "BYTES", (-1,), path="/texts"),
            TensorInput("flags", "BOOL", (-1, 2), path="/flags"),
            TensorInput("small", "UINT8", (2, 2), path="/m"),
        ),
        outputs=(TensorOutput("y", "/out/y", squeeze=True),),
    ),
    OipMapping(
        inputs=(
            TensorInput("x", "FP64", (-1,), path="/x"),
            TensorInput("i", "INT8", (1,), path="/i"),
            TensorInput("u", "UINT64", (1,), path="/u"),
        )
    ),
)


def _mapping(raw: bytes) -> OipMapping:
    try:
        data = orjson.loads(raw)
        return OipMapping(
            inputs=tuple(
                TensorInput(
                    name=t["name"],
                    datatype=t["datatype"],
                    shape=tuple(int(d) for d in t["shape"]),
                    path=t.get("path", ""),
                    paths=tuple(t.get("paths", ())),
                )
                for t in data["inputs"]
            ),
            outputs=tuple(
                TensorOutput(name=t["name"], path=t.get("path", ""), squeeze=bool(t.get("squeeze")))
                for t in data.get("outputs", ())
            ),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return FIXED[len(raw) % len(FIXED)]


def _typed(mapping: OipMapping) -> bool:
    """Whether every field has the type the registry's protobuf conversion would give it."""
    return all(
        isinstance(t.name, str)
        and isinstance(t.datatype, str)
        and isinstance(t.path, str)
        and all(isinstance(p, str) for p in t.paths)
        and all(-(2**63) <= d < 2**63 for d in t.shape)
        for t in mapping.inputs
    ) and all(isinstance(t.name, str) and isinstance(t.path, str) for t in mapping.outputs)


def fuzz_one(data: bytes) -> None:
    """Register (validate) the mapping, then encode one payload with it."""
    raw_mapping, _, raw_payload = data.partition(b"\x00")
    mapping = _mapping(raw_mapping)
    if not _typed(mapping):
        return
    model = ModelVersion(
        vendor="acme",
        name="m",
        version="1.0.0",
        runtime=Runtime.OPEN_INFERENCE_GRPC,
        endpoint=Endpoint(target="127.0.0.1:8081"),
        oip_mapping=mapping,
    )
    try:
        validate_model(model)  # what RegistryStore.register checks,
        check_registered_mapping(model)  # with the check the server hands it
    except EXPECTED:
        return
    validate_mapping(mapping)  # accepted by the registry: must not fail at call time
    try:
        payload: Any = orjson.loads(raw_payload)
    except orjson.JSONDecodeError:
        return
    if not isinstance(payload, dict):
        return
    try:
        wire = encode_request(mapping, payload, model_name="m", request_id="r")
    except EXPECTED:
        return
    request = pb.ModelInferRequest.FromString(wire)
    assert [t.name for t in request.inputs] == [t.name for t in mapping.inputs]
    for tensor in request.inputs:
        field = DATATYPES[tensor.datatype].field
        assert len(getattr(tensor.contents, field)) == math.prod(tensor.shape), tensor.name


if __name__ == "__main__":
    main(fuzz_one)

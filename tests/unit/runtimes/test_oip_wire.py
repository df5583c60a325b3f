"""The request bytes written directly are the bytes protobuf serialises for the same message."""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest

from broker._proto.inference.v2 import grpc_predict_v2_pb2 as pb
from broker.registry.model import OipMapping, TensorInput, TensorOutput
from broker.runtimes import oip_wire
from broker.runtimes.oip_mapping import encode_request
from broker.runtimes.oip_tensors import DATATYPES, FP32_MAX, INPUT_DATATYPES


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "8001"),
        (300, "ac02"),
        (2**63 - 1, "ffffffffffffffff7f"),
        (2**64 - 1, "ffffffffffffffffff01"),
        (-1, "ffffffffffffffffff01"),
        (-(2**63), "80808080808080808001"),
    ],
)
def test_varint_as_protobuf_writes_it(value: int, wire: str) -> None:
    assert oip_wire.varint(value).hex() == wire


def _value(rng: random.Random, datatype: str) -> Any:
    kind = DATATYPES[datatype]
    if kind.kind == "bool":
        return rng.random() < 0.5
    if kind.kind == "bytes":
        return "".join(rng.choices("ab é\x00\U0001f600", k=rng.randint(0, 200)))
    if kind.kind == "int":
        edge = [kind.low, kind.high, 0, -1, 1, 127, 128, -129]
        edge = [e for e in edge if kind.low <= e <= kind.high]
        return rng.choice(edge) if rng.random() < 0.5 else rng.randint(kind.low, kind.high)
    limit = FP32_MAX if datatype == "FP32" else 1e308
    edge = [0.0, -0.0, limit, -limit, 5e-324, 1.1, 2**24 + 1.0]
    return rng.choice(edge) if rng.random() < 0.5 else rng.uniform(-1, 1) * limit


def _protobuf_bytes(
    name: str, datatype: str, shape: list[int], values: list[Any], outputs: tuple[str, ...]
) -> bytes:
    """The reference: the same request built and serialised by protobuf itself."""
    field = DATATYPES[datatype].field
    encoded = [v.encode() for v in values] if datatype == "BYTES" else values
    request = pb.ModelInferRequest(model_name="m", model_version="v", id="call-1")
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(encoded)
    for out in dict.fromkeys(outputs):
        request.outputs.add(name=out)
    return request.SerializeToString()


@pytest.mark.parametrize("datatype", sorted(INPUT_DATATYPES))
def test_encoded_request_equals_protobufs_serialisation(datatype: str) -> None:
    rng = random.Random(datatype)
    for _ in range(60):
        count = rng.choice([0, 1, 1, 2, 3, 7, 200])
        values = [_value(rng, datatype) for _ in range(count)]
        declared = rng.choice([(count,), (-1,), (1, -1), (count, 1)])
        shape = [count if d == -1 else d for d in declared]
        if count == 0 and -1 in declared:
            declared, shape = (0,), [0]
        outputs = tuple(rng.sample(["y", "z", "y"], k=rng.randint(0, 3)))
        mapping = OipMapping(
            inputs=(TensorInput(name="in-é", datatype=datatype, shape=declared, path="/x"),),
            outputs=tuple(TensorOutput(name=o, path=f"/{o}{i}") for i, o in enumerate(outputs)),
        )
        payload = {"x": values[0] if count == 1 and rng.random() < 0.5 else values}
        wire = encode_request(
            mapping, payload, model_name="m", model_version="v", request_id="call-1"
        )
        assert wire == _protobuf_bytes("in-é", datatype, shape, values, outputs)


def test_scalar_inputs_and_gathered_paths_equal_protobufs_serialisation() -> None:
    mapping = OipMapping(
        inputs=(
            TensorInput(name="a", datatype="INT32", shape=(), path="/a"),
            TensorInput(name="b", datatype="FP32", shape=(1, 1, -1), path="/b"),
            TensorInput(name="c", datatype="INT64", shape=(2,), paths=("/c/0", "/d")),
        )
    )
    payload = {"a": -5, "b": 0.1, "c": [-(2**40)], "d": 3}
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="a", datatype="INT32").contents.int_contents.extend([-5])
    b = request.inputs.add(name="b", datatype="FP32", shape=[1, 1, 1])
    b.contents.fp32_contents.extend([0.1])
    c = request.inputs.add(name="c", datatype="INT64", shape=[2])
    c.contents.int64_contents.extend([-(2**40), 3])
    assert encode_request(mapping, payload, model_name="m") == request.SerializeToString()
    # FP32 travels rounded to single precision, as protobuf rounds it.
    parsed = pb.ModelInferRequest.FromString(encode_request(mapping, payload, model_name="m"))
    assert (
        parsed.inputs[1].contents.fp32_contents[0] == struct.unpack("<f", struct.pack("<f", 0.1))[0]
    )

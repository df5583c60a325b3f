"""ModelInferResponse -> answer: contents and raw decoding, reshaping, mapping, hostile answers."""

from __future__ import annotations

import re
import struct
from typing import Any

import pytest

from broker._proto.inference.v2 import grpc_predict_v2_pb2 as pb
from broker.errors import BackendError
from broker.registry.model import OipMapping, TensorInput, TensorOutput
from broker.runtimes.oip_mapping import build_answer
from broker.runtimes.oip_tensors import decode_output

INPUTS = (TensorInput(name="x", datatype="FP32", shape=(-1,), path="/x"),)
NO_OUTPUTS = OipMapping(inputs=INPUTS)

Output = pb.ModelInferResponse.InferOutputTensor


def response(*outputs: Output, raw: list[bytes] | None = None) -> pb.ModelInferResponse:
    return pb.ModelInferResponse(model_name="m", outputs=outputs, raw_output_contents=raw or [])


def out(name: str, datatype: str, shape: list[int], **contents: Any) -> Output:
    return Output(
        name=name, datatype=datatype, shape=shape, contents=pb.InferTensorContents(**contents)
    )


def raw_bytes(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


@pytest.mark.parametrize(
    ("datatype", "field", "values"),
    [
        ("BOOL", "bool_contents", [True, False, True, False]),
        ("INT8", "int_contents", [-128, 0, 1, 127]),
        ("INT32", "int_contents", [-(2**31), 0, 1, 2**31 - 1]),
        ("INT64", "int64_contents", [-(2**63), 0, 1, 2**63 - 1]),
        ("UINT8", "uint_contents", [0, 1, 2, 255]),
        ("UINT64", "uint64_contents", [0, 1, 2, 2**64 - 1]),
        ("FP32", "fp32_contents", [0.5, -1.0, 2.0, 0.25]),
        ("FP64", "fp64_contents", [0.1, -1e300, 2.0, 1e-300]),
    ],
)
def test_contents_are_reshaped(datatype: str, field: str, values: list[Any]) -> None:
    answer = build_answer(NO_OUTPUTS, response(out("y", datatype, [2, 2], **{field: values})))
    assert answer == {"y": [values[:2], values[2:]]}


@pytest.mark.parametrize(
    ("datatype", "code", "values"),
    [
        ("BOOL", "?", [True, False]),
        ("INT8", "b", [-128, 127]),
        ("INT16", "h", [-32768, 32767]),
        ("INT32", "i", [-(2**31), 2**31 - 1]),
        ("INT64", "q", [-(2**63), 2**63 - 1]),
        ("UINT8", "B", [0, 255]),
        ("UINT16", "H", [0, 65535]),
        ("UINT32", "I", [0, 2**32 - 1]),
        ("UINT64", "Q", [0, 2**64 - 1]),
        ("FP16", "e", [0.5, -2.0]),
        ("FP32", "f", [0.5, -2.0]),
        ("FP64", "d", [0.1, -2.5]),
    ],
)
def test_raw_contents_are_little_endian(datatype: str, code: str, values: list[Any]) -> None:
    data = struct.pack(f"<{len(values)}{code}", *values)
    answer = build_answer(
        NO_OUTPUTS, response(Output(name="y", datatype=datatype, shape=[2]), raw=[data])
    )
    assert answer == {"y": values}


def test_raw_contents_are_matched_to_outputs_by_position() -> None:
    r = response(
        Output(name="a", datatype="INT32", shape=[1]),
        Output(name="b", datatype="BYTES", shape=[2]),
        raw=[struct.pack("<i", 7), raw_bytes(b"cat", b"\xff\xfe")],
    )
    assert build_answer(NO_OUTPUTS, r) == {"a": [7], "b": ["cat", {"base64": "//4="}]}


def test_bytes_contents_decode_as_text_or_marked_base64() -> None:
    r = response(out("y", "BYTES", [3], bytes_contents=[b"h\xc3\xa9", b"", b"\x80"]))
    assert build_answer(NO_OUTPUTS, r) == {"y": ["hé", "", {"base64": "gA=="}]}


def test_scalar_and_empty_shapes() -> None:
    r = response(
        out("s", "INT64", [], int64_contents=[4]),
        out("e", "FP32", [0]),
        out("z", "FP32", [3, 0]),
        out("w", "FP32", [0, 3]),
    )
    assert build_answer(NO_OUTPUTS, r) == {"s": 4, "e": [], "z": [[], [], []], "w": []}


def test_mapping_places_and_squeezes_outputs() -> None:
    m = OipMapping(
        inputs=INPUTS,
        outputs=(
            TensorOutput(name="predict", path="/result/class", squeeze=True),
            TensorOutput(name="predict_proba", path="/result/probabilities"),
            TensorOutput(name="predict", path="/raw~1class"),
        ),
    )
    r = response(
        out("predict", "INT64", [1, 1], int64_contents=[2]),
        out("predict_proba", "FP64", [1, 3], fp64_contents=[0.1, 0.2, 0.7]),
        out("unmapped", "INT64", [1], int64_contents=[9]),
    )
    assert build_answer(m, r) == {
        "result": {"class": 2, "probabilities": [[0.1, 0.2, 0.7]]},
        "raw/class": [[2]],
    }


def test_squeeze_keeps_other_dimensions() -> None:
    r = response(out("p", "INT32", [1, 3, 1], int_contents=[1, 2, 3]))
    assert decode_output(r, 0, squeeze=True) == [1, 2, 3]
    assert decode_output(r, 0) == [[[1], [2], [3]]]


@pytest.mark.parametrize(
    ("r", "fragment"),
    [
        (response(out("y", "COMPLEX64", [1])), "unknown datatype 'COMPLEX64'"),
        (response(out("y", "FP32", [2], fp32_contents=[1.0])), "does not fill its shape"),
        (response(out("y", "FP32", [1], fp32_contents=[1.0, 2.0])), "does not fill its shape"),
        (response(out("y", "FP32", [-1], fp32_contents=[1.0])), "invalid shape"),
        (response(out("y", "FP32", [1] * 65, fp32_contents=[1.0])), "invalid shape"),
        (response(out("y", "FP32", [10**9, 0])), "degenerate shape"),
        (response(out("y", "FP32", [2**62, 2**62], fp32_contents=[1.0])), "does not fill"),
        (response(out("y", "FP16", [1])), "as FP16 without raw contents"),
        (response(out("y", "FP32", [1]), out("y", "FP32", [1])), "twice"),
        (response(Output(name="y", datatype="FP32", shape=[2]), raw=[b"\0" * 7]), "raw data"),
        (
            response(
                Output(name="a", datatype="FP32", shape=[1]),
                Output(name="b", datatype="FP32", shape=[1]),
                raw=[b"\0" * 4],
            ),
            "no raw contents for output tensor 'b'",
        ),
        (
            response(Output(name="y", datatype="BYTES", shape=[1]), raw=[b"\x05\0\0\0ab"]),
            "malformed raw BYTES",
        ),
        (
            response(Output(name="y", datatype="BYTES", shape=[1]), raw=[b"\x01\0"]),
            "malformed raw BYTES",
        ),
        (
            response(Output(name="y", datatype="BYTES", shape=[1]), raw=[raw_bytes(b"a", b"b")]),
            "malformed raw BYTES",
        ),
        (
            response(Output(name="y", datatype="BYTES", shape=[2]), raw=[raw_bytes(b"a")]),
            "malformed raw BYTES",
        ),
    ],
)
def test_malformed_answers_are_backend_errors(r: pb.ModelInferResponse, fragment: str) -> None:
    with pytest.raises(BackendError) as info:
        build_answer(NO_OUTPUTS, r)
    assert fragment in info.value.message


def test_missing_mapped_output_is_a_backend_error() -> None:
    m = OipMapping(inputs=INPUTS, outputs=(TensorOutput(name="predict"),))
    with pytest.raises(BackendError, match="lacks output tensor 'predict'"):
        build_answer(m, response(out("other", "INT64", [1], int64_contents=[1])))


def test_hostile_names_and_datatypes_are_truncated_in_messages() -> None:
    with pytest.raises(BackendError) as info:
        build_answer(NO_OUTPUTS, response(out("n" * 10_000, "D" * 10_000, [1])))
    assert len(info.value.message) < 250


def test_answer_values_never_appear_in_errors() -> None:
    r = response(out("y", "BYTES", [2], bytes_contents=[b"s3cr3t-value"]))
    with pytest.raises(BackendError) as info:
        build_answer(NO_OUTPUTS, r)
    assert "s3cr3t" not in info.value.message


_RANK_ONE_CASES = [
    ("BOOL", "bool_contents", [True, False]),
    ("INT8", "int_contents", [-128, 127]),
    ("UINT64", "uint64_contents", [2**64 - 1, 0]),
    ("FP32", "fp32_contents", [0.5, -1.0]),
    ("FP64", "fp64_contents", [0.1, -1e300]),
    ("BYTES", "bytes_contents", [b"caf\xc3\xa9", b"\x80\xff"]),
]


@pytest.mark.parametrize(("datatype", "field", "values"), _RANK_ONE_CASES)
@pytest.mark.parametrize("count", [0, 1, 2])
@pytest.mark.parametrize("declared", ["count", "more", "none"])
@pytest.mark.parametrize("squeeze", [False, True])
def test_answer_shortcut_for_rank_one_equals_decode_output(
    datatype: str, field: str, values: list[Any], count: int, declared: str, squeeze: bool
) -> None:
    # build_answer decodes rank-1 typed tensors itself; it must give what decode_output gives,
    # and leave every error (data that does not fill the shape) to it.
    shape = {"count": [count], "more": [count + 1], "none": []}[declared]
    r = response(out("y", datatype, shape, **{field: values[:count]}))
    mapping = OipMapping(inputs=INPUTS, outputs=(TensorOutput(name="y", squeeze=squeeze),))
    try:
        expected: Any = decode_output(r, 0, squeeze=squeeze)
    except BackendError as exc:
        with pytest.raises(BackendError, match=re.escape(str(exc))):
            build_answer(mapping, r)
        return
    assert build_answer(mapping, r) == {"y": expected}
    assert build_answer(NO_OUTPUTS, r) == {"y": decode_output(r, 0)}

"""Payload -> ModelInferRequest: pointers, shapes, datatypes, and errors that never leak values."""

from __future__ import annotations

from typing import Any

import pytest

from broker._proto.inference.v2 import grpc_predict_v2_pb2 as pb
from broker.errors import FailedPrecondition, InvalidArgument
from broker.registry.model import OipMapping, TensorInput, TensorOutput
from broker.runtimes.oip_mapping import build_request, validate_mapping

SECRET = "s3cr3t-do-not-leak"


def mapping(*inputs: TensorInput, outputs: tuple[TensorOutput, ...] = ()) -> OipMapping:
    return OipMapping(inputs=inputs, outputs=outputs)


def one(datatype: str, shape: tuple[int, ...], path: str = "/x") -> OipMapping:
    return mapping(TensorInput(name="t", datatype=datatype, shape=shape, path=path))


def tensor(m: OipMapping, payload: dict[str, Any]) -> pb.ModelInferRequest.InferInputTensor:
    request = build_request(m, payload, model_name="m")
    assert len(request.inputs) == 1
    return request.inputs[0]


def error_of(m: OipMapping, payload: dict[str, Any]) -> str:
    with pytest.raises(InvalidArgument) as info:
        build_request(m, payload, model_name="m")
    message = info.value.message
    assert SECRET not in message
    return message


IRIS_PATHS = mapping(
    TensorInput(
        name="input-0",
        datatype="FP64",
        shape=(1, 4),
        paths=("/sepal/length", "/sepal/width", "/petal/length", "/petal/width"),
    )
)
IRIS_PAYLOAD = {"sepal": {"length": 5.1, "width": 3.5}, "petal": {"length": 1.4, "width": 0.2}}


def test_paths_gather_scalars_in_order() -> None:
    request = build_request(
        IRIS_PATHS, IRIS_PAYLOAD, model_name="iris", model_version="v1", request_id="call-1"
    )
    assert (request.model_name, request.model_version, request.id) == ("iris", "v1", "call-1")
    t = request.inputs[0]
    assert (t.name, t.datatype, list(t.shape)) == ("input-0", "FP64", [1, 4])
    assert list(t.contents.fp64_contents) == [5.1, 3.5, 1.4, 0.2]
    assert len(request.outputs) == 0  # no outputs mapping: the server's default outputs


def test_requested_outputs_are_the_mapped_ones_once_each() -> None:
    m = mapping(
        *IRIS_PATHS.inputs,
        outputs=(
            TensorOutput(name="predict"),
            TensorOutput(name="predict_proba", path="/p"),
            TensorOutput(name="predict_proba", path="/q"),
        ),
    )
    request = build_request(m, IRIS_PAYLOAD, model_name="iris")
    assert [o.name for o in request.outputs] == ["predict", "predict_proba"]


@pytest.mark.parametrize(
    ("value", "shape", "expected_shape"),
    [
        ([[5.1, 3.5, 1.4, 0.2]], (-1, 4), [1, 4]),
        ([[1, 2, 3, 4], [5, 6, 7, 8]], (-1, 4), [2, 4]),
        ([[1, 2, 3, 4], [5, 6, 7, 8]], (2, -1), [2, 4]),
        ([1, 2, 3, 4], (1, 4), [1, 4]),  # a flat array is reshaped by element count
        ([1, 2, 3, 4], (-1,), [4]),
        (7, (), []),  # a scalar tensor
        (7, (1,), [1]),
        (7, (1, 1), [1, 1]),
        ([], (-1,), [0]),
        ([[], []], (2, 0), [2, 0]),
        ([[[1], [2]], [[3], [4]]], (2, 2, 1), [2, 2, 1]),
    ],
)
def test_path_shapes(value: Any, shape: tuple[int, ...], expected_shape: list[int]) -> None:
    t = tensor(one("FP64", shape), {"x": value})
    assert list(t.shape) == expected_shape


def test_nested_values_are_flattened_row_major() -> None:
    t = tensor(one("INT32", (2, 2)), {"x": [[1, 2], [3, 4]]})
    assert list(t.contents.int_contents) == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("value", "shape", "fragment"),
    [
        ([[1, 2], [3]], (2, -1), "ragged"),
        ([[1, 2], 3], (2, -1), "ragged"),
        ([1, [2, 3]], (-1,), "ragged"),
        ([[1, 2, 3], [4, 5, 6]], (3, 2), "has dimensions [2, 3], the model needs [3, 2]"),
        ([[1, 2], [3, 4]], (4,), "has dimensions [2, 2], the model needs [4]"),
        ([1, 2, 3], (1, 4), "gives 3 values, shape [1, 4] needs 4"),
        ([1, 2, 3, 4, 5], (-1, 4), "gives 5 values, not a multiple of 4"),
        ([], (1,), "gives 0 values"),
    ],
)
def test_shape_mismatches(value: Any, shape: tuple[int, ...], fragment: str) -> None:
    message = error_of(one("FP32", shape), {"x": value})
    assert "tensor 't'" in message
    assert "/x" in message
    assert fragment in message


def test_hostile_depth_is_refused_without_recursion() -> None:
    deep: Any = 1
    for _ in range(10_000):
        deep = [deep]
    assert "too deep" in error_of(one("FP32", (-1,)), {"x": deep})


@pytest.mark.parametrize(
    ("datatype", "good", "field"),
    [
        ("BOOL", [True, False], "bool_contents"),
        ("INT8", [-128, 127], "int_contents"),
        ("INT16", [-32768, 32767], "int_contents"),
        ("INT32", [-(2**31), 2**31 - 1], "int_contents"),
        ("INT64", [-(2**63), 2**63 - 1], "int64_contents"),
        ("UINT8", [0, 255], "uint_contents"),
        ("UINT16", [0, 65535], "uint_contents"),
        ("UINT32", [0, 2**32 - 1], "uint_contents"),
        ("UINT64", [0, 2**64 - 1], "uint64_contents"),
        ("FP32", [1.5, -3], "fp32_contents"),
        ("FP64", [1e300, 2], "fp64_contents"),
    ],
)
def test_datatype_bounds_accepted(datatype: str, good: list[Any], field: str) -> None:
    t = tensor(one(datatype, (-1,)), {"x": good})
    assert list(getattr(t.contents, field)) == pytest.approx(good)


@pytest.mark.parametrize(
    ("datatype", "bad", "fragment"),
    [
        ("INT8", 128, "is out of range for INT8"),
        ("INT8", -129, "is out of range for INT8"),
        ("INT16", 2**15, "is out of range for INT16"),
        ("INT32", -(2**31) - 1, "is out of range for INT32"),
        ("INT64", 2**63, "is out of range for INT64"),
        ("UINT8", -1, "is out of range for UINT8"),
        ("UINT8", 256, "is out of range for UINT8"),
        ("UINT16", 65536, "is out of range for UINT16"),
        ("UINT32", 2**32, "is out of range for UINT32"),
        ("UINT64", 2**64, "is out of range for UINT64"),
        ("FP32", 3.5e38, "is out of range for FP32"),
        ("FP32", 10**400, "is out of range for FP32"),
        ("FP64", 10**400, "is out of range for FP64"),
        ("FP64", float("nan"), "is out of range for FP64"),
        ("FP64", float("inf"), "is out of range for FP64"),
        ("INT32", 1.5, "must be an integer, got a number"),
        ("INT32", 1.0, "must be an integer, got a number"),
        ("INT32", True, "must be an integer, got a boolean"),
        ("INT64", "12", "must be an integer, got a string"),
        ("FP32", True, "must be a number, got a boolean"),
        ("FP32", None, "must be a number, got a null"),
        ("FP32", {"k": 1}, "must be a number, got a object"),
        ("BOOL", 1, "must be a boolean, got a number"),
        ("BYTES", 5, "must be a string, got a number"),
        ("BYTES", "\ud800", "is not encodable as UTF-8"),
    ],
)
def test_datatype_mismatches_name_the_element_not_the_value(
    datatype: str, bad: Any, fragment: str
) -> None:
    filler = {"BYTES": "a", "BOOL": True}.get(datatype, 0)
    payload = {"rows": [[filler, filler], [filler, bad]]}
    message = error_of(one(datatype, (2, 2), path="/rows"), payload)
    # The whole message is the element's pointer and the reason: no room for the value.
    assert message == f"tensor 't': /rows/1/1 {fragment}"


def test_values_never_appear_in_errors() -> None:
    m = mapping(TensorInput(name="t", datatype="INT64", shape=(2,), paths=("/a", "/b")))
    message = error_of(m, {"a": 1, "b": SECRET})
    assert message == "tensor 't': /b must be an integer, got a string"
    big = 98765432109876543210987654321
    assert str(big) not in error_of(m, {"a": 1, "b": big})


def test_bytes_are_utf8_encoded() -> None:
    t = tensor(one("BYTES", (-1,)), {"x": ["héllo", ""]})
    assert list(t.contents.bytes_contents) == ["héllo".encode(), b""]


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({}, "tensor 't': /x: no member at /x"),
        ({"x": {"y": 1}}, "must be a number, got a object"),
        ({"x": [1, {"y": 1}]}, "tensor 't': /x/1 must be a number"),
    ],
)
def test_missing_and_wrongly_typed_fields(payload: dict[str, Any], fragment: str) -> None:
    assert fragment in error_of(one("FP32", (-1,)), payload)


def test_paths_refuse_containers() -> None:
    m = mapping(TensorInput(name="t", datatype="FP32", shape=(2,), paths=("/a", "/b")))
    assert error_of(m, {"a": 1, "b": [1]}) == "tensor 't': /b must be a scalar, got a array"


def test_escaped_pointers_reach_odd_keys() -> None:
    m = mapping(TensorInput(name="t", datatype="FP32", shape=(2,), paths=("/a~1b", "/m~0n")))
    t = tensor(m, {"a/b": 1, "m~n": 2})
    assert list(t.contents.fp32_contents) == [1.0, 2.0]


def test_array_indices_in_pointers() -> None:
    m = mapping(TensorInput(name="t", datatype="INT8", shape=(2,), paths=("/r/0", "/r/1/v")))
    assert list(tensor(m, {"r": [3, {"v": 4}]}).contents.int_contents) == [3, 4]


@pytest.mark.parametrize(
    ("bad_mapping", "fragment"),
    [
        (OipMapping(), "no input tensor"),
        (one("FP16", (1,)), "datatype 'FP16' cannot be sent"),
        (one("COMPLEX", (1,)), "datatype 'COMPLEX' cannot be sent"),
        (one("FP32", (-1, -1)), "at most one -1"),
        (one("FP32", (-2,)), "at most one -1"),
        (one("FP32", (0, -1)), "next to a 0 dimension"),
        (one("FP32", (1,), path="x"), "must be empty or start with '/'"),
        (one("FP32", (1,), path="/a~2"), "'~' must be followed by"),
        (mapping(TensorInput(name="t", datatype="FP32", shape=(1,))), "exactly one of"),
        (
            mapping(TensorInput(name="t", datatype="FP32", shape=(1,), path="/a", paths=("/b",))),
            "exactly one of",
        ),
        (
            mapping(TensorInput(name="t", datatype="FP32", shape=(3,), paths=("/a", "/b"))),
            "gives 2 values, shape [3] needs 3",
        ),
        (mapping(TensorInput(name="", datatype="FP32", shape=(1,), path="/a")), "no name"),
        (
            mapping(
                TensorInput(name="t", datatype="FP32", shape=(1,), path="/a"),
                TensorInput(name="t", datatype="FP32", shape=(1,), path="/b"),
            ),
            "same name",
        ),
        (
            mapping(
                *IRIS_PATHS.inputs,
                outputs=(TensorOutput(name="a", path="/r"), TensorOutput(name="b", path="/r")),
            ),
            "taken by another output",
        ),
        (
            mapping(
                *IRIS_PATHS.inputs,
                outputs=(TensorOutput(name="a", path="/r"), TensorOutput(name="b", path="/r/x")),
            ),
            "taken by another output",
        ),
        (mapping(*IRIS_PATHS.inputs, outputs=(TensorOutput(name=""),)), "no name"),
    ],
)
def test_broken_mappings_are_failed_preconditions(bad_mapping: OipMapping, fragment: str) -> None:
    with pytest.raises(FailedPrecondition) as info:
        validate_mapping(bad_mapping)
    assert fragment in info.value.message
    with pytest.raises(FailedPrecondition):
        build_request(bad_mapping, {"a": 1, "b": 2, "x": [1]}, model_name="m")


def test_output_with_empty_path_lands_under_its_name() -> None:
    validate_mapping(
        mapping(*IRIS_PATHS.inputs, outputs=(TensorOutput(name="a"), TensorOutput(name="b")))
    )

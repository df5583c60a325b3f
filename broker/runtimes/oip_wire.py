"""The protobuf wire bytes of a ``ModelInferRequest``, written directly (no message objects).

Why: building the request as protobuf messages cost about a third of the tensor mapping's time
(a message per tensor, then its contents, then serialising it all again), and what the runtime
needs is the bytes. A model's tensors keep their names and datatypes from call to call, so
those fields are encoded once per mapping (``tensor_header``), and each call only encodes its
shapes and values.

The output is what protobuf's own serialiser writes for the same message, byte for byte (fields
in field-number order, proto3 defaults left out, repeated scalars packed, an input's
``contents`` always present even when empty, as ``contents.<field>.extend([])`` makes it);
``tests/unit/runtimes/test_oip_wire.py`` holds the two to that. Values arrive already checked
and converted by ``oip_mapping`` (integers in their datatype's range, finite floats within
FP32's range for FP32, BYTES as ``bytes``), so nothing here can fail on a value.

Field numbers are those of ``proto/inference/v2/grpc_predict_v2.proto``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

_LEN: Final = 2  # wire type of length-delimited fields
_SMALL: Final = tuple(bytes((n,)) for n in range(0x80))

# ModelInferRequest
_MODEL_NAME, _MODEL_VERSION, _ID, _INPUTS, _OUTPUTS = 1, 2, 3, 5, 6
# InferInputTensor and InferRequestedOutputTensor
_NAME, _DATATYPE, _SHAPE, _CONTENTS = 1, 2, 3, 5


def varint(value: int) -> bytes:
    """Base-128 varint; a negative value as its 64-bit two's complement (ten bytes).

    That is how protobuf writes negative ``int32`` and ``int64`` values alike.
    """
    if 0 <= value < 0x80:
        return _SMALL[value]
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(number: int) -> bytes:
    return varint(number << 3 | _LEN)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes, sub-message, packed repeated scalars)."""
    return _tag(number) + varint(len(payload)) + payload


def _text(number: int, text: str) -> bytes:
    """A string field; proto3 leaves the empty string out."""
    return _field(number, text.encode("utf-8")) if text else b""


def _packed_varints(values: Iterable[int]) -> bytes:
    return b"".join(map(varint, values))


def _packed_struct(code: str) -> Callable[[Sequence[Any]], bytes]:
    def pack(values: Sequence[Any]) -> bytes:
        return struct.pack(f"<{len(values)}{code}", *values)

    return pack


def _bools(values: Sequence[Any]) -> bytes:
    return bytes(1 if v else 0 for v in values)


# InferTensorContents: field name -> (field number, encoder of the packed payload); BYTES
# (field 8) is repeated, not packed, and is written by ``contents``.
_PACKED: Final[dict[str, tuple[int, Callable[[Sequence[Any]], bytes]]]] = {
    "bool_contents": (1, _bools),
    "int_contents": (2, _packed_varints),
    "int64_contents": (3, _packed_varints),
    "uint_contents": (4, _packed_varints),
    "uint64_contents": (5, _packed_varints),
    "fp32_contents": (6, _packed_struct("f")),
    "fp64_contents": (7, _packed_struct("d")),
}
_BYTES_CONTENTS: Final = "bytes_contents"
_BYTES_TAG: Final = _tag(8)


def contents(field: str, values: Sequence[Any]) -> bytes:
    """The ``InferTensorContents`` message with ``values`` in ``field`` (a typed contents field).

    ``KeyError`` for a field that is not one: ``oip_mapping`` only sends input datatypes.
    """
    if not values:
        return b""
    if field == _BYTES_CONTENTS:
        return b"".join(_BYTES_TAG + varint(len(v)) + v for v in values)
    number, encode = _PACKED[field]
    return _field(number, encode(values))


def tensor_header(name: str, datatype: str) -> bytes:
    """The fields of an ``InferInputTensor`` that do not change from call to call."""
    return _text(_NAME, name) + _text(_DATATYPE, datatype)


def shape_field(shape: Sequence[int]) -> bytes:
    """The packed ``shape`` field of a tensor ("" for a scalar's empty shape)."""
    return _field(_SHAPE, _packed_varints(shape)) if shape else b""


def input_tensor(header: bytes, shape: bytes, body: bytes) -> bytes:
    """One ``inputs`` entry of the request: header, shape field, and contents (always there)."""
    tensor = header + shape + _field(_CONTENTS, body)
    return _field(_INPUTS, tensor)


def request_head(model_name: str, model_version: str, request_id: str) -> bytes:
    """The request's own fields that precede its inputs."""
    return (
        _text(_MODEL_NAME, model_name)
        + _text(_MODEL_VERSION, model_version)
        + _text(_ID, request_id)
    )


def requested_outputs(names: Iterable[str]) -> bytes:
    """The ``outputs`` entries asking for ``names``, in order."""
    return b"".join(_field(_OUTPUTS, _text(_NAME, name)) for name in names)

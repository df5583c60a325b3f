"""The wire form of Open Inference Protocol tensors: datatypes, and decoding of outputs.

Output data arrives either in the typed ``contents`` fields or as ``raw_output_contents`` (one
little-endian byte string per output, BYTES elements each prefixed by a 4-byte little-endian
length). Both are decoded with ``struct`` and reshaped to nested lists, so the broker needs no
numpy. The backend is not trusted: a shape that its data does not fill, an unknown datatype, or
a shape that would make us build millions of empty lists is a ``BackendError``, and messages
name tensors and datatypes, never values.
"""

from __future__ import annotations

import base64
import math
import struct
from dataclasses import dataclass
from typing import Any

from broker._proto.inference.v2 import grpc_predict_v2_pb2 as pb
from broker.errors import BackendError

MAX_RANK = 64  # numpy's limit; deeper answers are refused before any list is built
FP32_MAX: float = struct.unpack("<f", b"\xff\xff\x7f\x7f")[0]
_SLACK = 1024  # lists any small zero-sized shape may need, e.g. [3, 0]


@dataclass(frozen=True, slots=True)
class Datatype:
    """How one datatype travels: Python kind, contents field, struct code, integer range."""

    kind: str  # "bool" | "int" | "float" | "bytes"
    field: str  # InferTensorContents field, "" when only raw contents can carry it
    code: str  # struct format character for raw contents, "" for BYTES
    low: int = 0
    high: int = 0


def _int(field: str, code: str, bits: int, *, signed: bool) -> Datatype:
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return Datatype("int", field, code, low, high)


DATATYPES: dict[str, Datatype] = {
    "BOOL": Datatype("bool", "bool_contents", "?"),
    "INT8": _int("int_contents", "b", 8, signed=True),
    "INT16": _int("int_contents", "h", 16, signed=True),
    "INT32": _int("int_contents", "i", 32, signed=True),
    "INT64": _int("int64_contents", "q", 64, signed=True),
    "UINT8": _int("uint_contents", "B", 8, signed=False),
    "UINT16": _int("uint_contents", "H", 16, signed=False),
    "UINT32": _int("uint_contents", "I", 32, signed=False),
    "UINT64": _int("uint64_contents", "Q", 64, signed=False),
    "FP16": Datatype("float", "", "e"),
    "FP32": Datatype("float", "fp32_contents", "f"),
    "FP64": Datatype("float", "fp64_contents", "d"),
    "BYTES": Datatype("bytes", "bytes_contents", ""),
}
# FP16 has no typed contents field; we send inputs as typed contents only.
INPUT_DATATYPES = frozenset(name for name, dt in DATATYPES.items() if dt.field)


def decode_output(response: pb.ModelInferResponse, index: int, *, squeeze: bool = False) -> Any:
    """Decode output tensor ``index`` of a response into nested lists (or a scalar)."""
    tensor = response.outputs[index]
    datatype = DATATYPES.get(tensor.datatype)
    if datatype is None:
        raise BackendError(
            f"model backend sent {_where(tensor)} with unknown datatype {tensor.datatype!r:.40}"
        )
    shape = list(tensor.shape)
    rank = len(shape)
    if rank > MAX_RANK or (shape and min(shape) < 0):
        raise BackendError(f"model backend sent {_where(tensor)} with an invalid shape")
    count = math.prod(shape)
    if rank > 1 and _container_count(shape) > max(count, 1) * rank + _SLACK:
        raise BackendError(f"model backend sent {_where(tensor)} with a degenerate shape")
    if response.raw_output_contents:
        if index >= len(response.raw_output_contents):
            raise BackendError(f"model backend sent no raw contents for {_where(tensor)}")
        raw = response.raw_output_contents[index]
        values = _unpack_raw(datatype, raw, count, _where(tensor))
    elif datatype.field:
        values = list(getattr(tensor.contents, datatype.field))
    else:
        raise BackendError(
            f"model backend sent {_where(tensor)} as {tensor.datatype} without raw contents"
        )
    if len(values) != count:
        raise BackendError(
            f"model backend sent {_where(tensor)} whose data does not fill its shape"
        )
    if datatype.kind == "bytes":
        values = [_bytes_to_json(v) for v in values]
    if squeeze and 1 in shape:
        shape = [d for d in shape if d != 1]
    return reshape(values, shape)


def _where(tensor: pb.ModelInferResponse.InferOutputTensor) -> str:
    """How errors name a tensor; built only when there is an error to report."""
    return f"output tensor {tensor.name!r:.80}"


def _unpack_raw(datatype: Datatype, data: bytes, count: int, where: str) -> list[Any]:
    if datatype.kind == "bytes":
        return _unpack_raw_bytes(data, count, where)
    size = struct.calcsize("<" + datatype.code)
    if len(data) != count * size:
        raise BackendError(f"model backend sent {where} whose raw data does not fill its shape")
    return list(struct.unpack(f"<{count}{datatype.code}", data))


def _unpack_raw_bytes(data: bytes, count: int, where: str) -> list[bytes]:
    """Raw BYTES: each element is a 4-byte little-endian length followed by that many bytes."""
    values: list[bytes] = []
    offset = 0
    while offset < len(data) and len(values) < count:
        if offset + 4 > len(data):
            break
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + length > len(data):
            break
        values.append(data[offset : offset + length])
        offset += length
    if len(values) != count or offset != len(data):
        raise BackendError(f"model backend sent {where} with malformed raw BYTES data")
    return values


def _bytes_to_json(value: bytes) -> str | dict[str, str]:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode("ascii")}


def _container_count(shape: list[int]) -> int:
    """How many lists reshaping builds: bounded so ``[10**9, 0]`` cannot allocate a billion."""
    total, running = 0, 1
    for dim in shape[:-1]:
        running *= dim
        total += running
    return total


def reshape(values: list[Any], shape: list[int]) -> Any:
    """Nest a flat list row-major by ``shape``; ``[]`` gives a scalar."""
    if not shape:
        return values[0]
    if 0 in shape:
        return _empty(shape)
    items: list[Any] = values
    for dim in reversed(shape[1:]):
        items = [items[i : i + dim] for i in range(0, len(items), dim)]
    return items


def _empty(shape: list[int]) -> list[Any]:
    if shape[0] == 0:
        return []
    return [_empty(shape[1:]) for _ in range(shape[0])]

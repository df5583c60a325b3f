"""JSON payload <-> Open Inference Protocol tensors, as pure functions.

A model registered with the ``open_inference_grpc`` runtime declares an ``OipMapping``: which
JSON Pointers of the buyer's payload fill which input tensor, and where each output tensor goes
in the answer. Everything here is pure (no I/O), so it is tested on its own, and hostile input is
cheap to reject before a byte leaves the broker.

Who is at fault decides the error:

- the payload does not fit the mapping (missing field, wrong type, out of range, ragged array,
  wrong element count): ``InvalidArgument``, naming the tensor and the JSON Pointer;
- the mapping itself is broken (bad pointer, two ``-1`` in a shape, colliding output slots):
  ``FailedPrecondition``, the model is misconfigured and no payload can fix it;
- the backend's answer is malformed (unknown datatype, data that does not fill the shape):
  ``BackendError``.

No message ever contains a payload or answer value: only tensor names, pointers, JSON type
names, datatypes and counts.

Inputs travel in the typed ``contents`` fields. An input ``path`` takes a scalar or a nested
array: a nested array of the declared rank must match every declared dimension (``-1`` matches
any), while a scalar or a flat array is reshaped to the declared shape by element count (so
``[5.1, 3.5, 1.4, 0.2]`` fills shape ``[1, 4]``). ``paths`` gathers scalars in order. One ``-1``
in a shape is inferred from the element count.

Outputs are read from ``contents`` or ``raw_output_contents`` (little-endian, one entry per
output), reshaped to nested lists by their shape. BYTES elements become strings when they are
valid UTF-8 and ``{"base64": "<standard base64>"}`` otherwise, so binary answers survive the
JSON answer intact and are never confused with text. Without an ``outputs`` mapping every
output tensor appears under its own name; with one, only the mapped tensors reach the answer.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from broker._proto.inference.v2 import grpc_predict_v2_pb2 as pb
from broker.errors import BackendError, FailedPrecondition, InvalidArgument
from broker.registry.model import ModelVersion, OipMapping, TensorInput
from broker.runtimes import oip_wire
from broker.runtimes.json_pointer import (
    PointerError,
    format_pointer,
    json_type,
    parse_pointer,
    place,
    resolve,
)
from broker.runtimes.oip_tensors import (
    DATATYPES,
    FP32_MAX,
    INPUT_DATATYPES,
    MAX_RANK,
    Datatype,
    _bytes_to_json,
    decode_output,
)

_EXPECTED = {"bool": "a boolean", "int": "an integer", "float": "a number", "bytes": "a string"}


@dataclass(frozen=True, slots=True)
class _InputPlan:
    spec: TensorInput
    datatype: Datatype
    tokens: tuple[tuple[str, ...], ...]  # one entry for ``path``, one per pointer for ``paths``
    header: bytes  # the tensor's name and datatype on the wire
    # For a ``path`` input whose shape one scalar fills: that shape, and its wire form. The
    # common case (a field per tensor) then skips flattening and shape inference.
    scalar_shape: list[int] | None
    scalar_shape_wire: bytes


@dataclass(frozen=True, slots=True)
class _OutputPlan:
    name: str
    squeeze: bool
    tokens: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Plan:
    inputs: tuple[_InputPlan, ...]
    outputs: tuple[_OutputPlan, ...]
    requested_outputs: bytes  # the request's ``outputs`` entries, on the wire


def validate_mapping(mapping: OipMapping) -> None:
    """Raise ``FailedPrecondition`` if the mapping can never work; for registration time."""
    _compile(mapping)


def check_registered_mapping(model: ModelVersion) -> None:
    """The registry's extra check of a model (``RegistryStore(check=...)``): InvalidArgument if
    its tensor mapping can never compile.

    What the registry's own validation cannot see (outputs placed on top of each other,
    ``paths`` that do not fill the shape): compiled as a call would compile it, so a vendor
    learns at registration that it can never work, not every buyer at call time. It lives here,
    with the compiler, and is handed to the store by the server: the registry sits below the
    runtimes and never imports them.
    """
    if model.oip_mapping.inputs:
        try:
            validate_mapping(model.oip_mapping)
        except FailedPrecondition as exc:
            raise InvalidArgument(f"model.oip_mapping: {exc.message}") from None


def build_request(
    mapping: OipMapping,
    payload: dict[str, Any],
    *,
    model_name: str,
    model_version: str = "",
    request_id: str = "",
) -> pb.ModelInferRequest:
    """The ``ModelInferRequest`` for one payload, as a message (``encode_request``, parsed)."""
    return pb.ModelInferRequest.FromString(
        encode_request(
            mapping,
            payload,
            model_name=model_name,
            model_version=model_version,
            request_id=request_id,
        )
    )


def encode_request(
    mapping: OipMapping,
    payload: dict[str, Any],
    *,
    model_name: str,
    model_version: str = "",
    request_id: str = "",
) -> bytes:
    """The serialised ``ModelInferRequest`` for one payload, asking for the mapped outputs only.

    Every input is checked and converted before any byte is written (see ``_input_values``),
    then written by ``oip_wire`` exactly as protobuf would serialise the message.
    """
    plan = _plan_of(mapping)
    parts = [oip_wire.request_head(model_name, model_version, request_id)]
    for item in plan.inputs:
        shape_wire, values = _input_values(item, payload)
        parts.append(
            oip_wire.input_tensor(
                item.header, shape_wire, oip_wire.contents(item.datatype.field, values)
            )
        )
    parts.append(plan.requested_outputs)
    return b"".join(parts)


def build_answer(mapping: OipMapping, response: pb.ModelInferResponse) -> dict[str, Any]:
    """Turn the backend's response into the JSON answer the mapping describes."""
    plan = _plan_of(mapping)
    tensors = list(response.outputs)  # one wrapper per tensor, not one per lookup
    index: dict[str, int] = {}
    for i, tensor in enumerate(tensors):
        if tensor.name in index:
            raise BackendError(f"model backend answered output tensor {tensor.name!r:.80} twice")
        index[tensor.name] = i
    typed = not response.raw_output_contents
    answer: dict[str, Any] = {}
    if not plan.outputs:
        for name, i in index.items():
            answer[name] = _decode(response, tensors[i], i, typed=typed, squeeze=False)
        return answer
    for out in plan.outputs:
        if out.name not in index:
            raise BackendError(f"model backend's answer lacks output tensor {out.name!r}")
        i = index[out.name]
        value = _decode(response, tensors[i], i, typed=typed, squeeze=out.squeeze)
        try:
            place(answer, out.tokens, value)
        except PointerError as exc:  # _compile proved the slots distinct; kept as a guard
            raise FailedPrecondition(f"the model's tensor mapping is invalid: {exc}") from exc
    return answer


def _decode(
    response: pb.ModelInferResponse,
    tensor: pb.ModelInferResponse.InferOutputTensor,
    index: int,
    *,
    typed: bool,
    squeeze: bool,
) -> Any:
    """``decode_output``, with a shortcut for the usual tensor: rank 1, typed contents, well
    formed. The shortcut gives what ``decode_output`` gives for it (the values as a list; the
    one value itself when squeezed from shape ``[1]``); anything else, errors included, is
    left to ``decode_output``."""
    datatype = DATATYPES.get(tensor.datatype)
    shape = tensor.shape
    if typed and datatype is not None and datatype.field and len(shape) == 1:
        contents = getattr(tensor.contents, datatype.field)
        if shape[0] == len(contents):
            values = (
                [_bytes_to_json(v) for v in contents]
                if datatype.kind == "bytes"
                else list(contents)
            )
            return values[0] if squeeze and len(values) == 1 else values
    return decode_output(response, index, squeeze=squeeze)


_PLANS_BY_IDENTITY: dict[int, tuple[OipMapping, _Plan]] = {}
_MAX_PLANS = 1024


def _plan_of(mapping: OipMapping) -> _Plan:
    """The compiled plan of ``mapping``, found by identity first.

    A model version's mapping is one object for as long as the registry cache keeps it, and
    hashing it (a frozen dataclass of every tensor) on each call cost more than this lookup;
    an equal mapping that is another object still finds its plan in ``_compile``'s cache.
    Each entry holds its mapping, so an ``id`` is never reused while its entry exists.
    """
    found = _PLANS_BY_IDENTITY.get(id(mapping))
    if found is not None and found[0] is mapping:
        return found[1]
    plan = _compile(mapping)
    if len(_PLANS_BY_IDENTITY) >= _MAX_PLANS:
        _PLANS_BY_IDENTITY.clear()
    _PLANS_BY_IDENTITY[id(mapping)] = (mapping, plan)
    return plan


@functools.lru_cache(maxsize=1024)
def _compile(mapping: OipMapping) -> _Plan:
    """Check the mapping once and keep its parsed pointers (mappings are frozen, so hashable)."""
    if not mapping.inputs:
        _mapping_error("it declares no input tensor")
    inputs = tuple(_compile_input(spec) for spec in mapping.inputs)
    if len({item.spec.name for item in inputs}) != len(inputs):
        _mapping_error("two input tensors have the same name")
    outputs: list[_OutputPlan] = []
    slots: dict[str, Any] = {}
    for out in mapping.outputs:
        if not out.name:
            _mapping_error("an output tensor has no name")
        tokens = _parse(out.path, f"output {out.name!r}") if out.path else (out.name,)
        try:
            place(slots, tokens, None)
        except PointerError as exc:
            _mapping_error(f"output {out.name!r}: {exc}")
        outputs.append(_OutputPlan(out.name, out.squeeze, tokens))
    requested = oip_wire.requested_outputs(dict.fromkeys(out.name for out in outputs))
    return _Plan(inputs, tuple(outputs), requested)


def _compile_input(spec: TensorInput) -> _InputPlan:
    where = f"input {spec.name!r}"
    if not spec.name:
        _mapping_error("an input tensor has no name")
    if spec.datatype not in INPUT_DATATYPES:
        _mapping_error(f"{where}: datatype {spec.datatype!r} cannot be sent as an input")
    if bool(spec.path) == bool(spec.paths):
        _mapping_error(f"{where}: set exactly one of path and paths")
    if any(d < -1 for d in spec.shape) or list(spec.shape).count(-1) > 1:
        _mapping_error(f"{where}: a shape has dimensions >= 0 and at most one -1")
    if -1 in spec.shape and math.prod(d for d in spec.shape if d != -1) == 0:
        _mapping_error(f"{where}: -1 cannot be inferred next to a 0 dimension")
    pointers = (spec.path,) if spec.path else spec.paths
    tokens = tuple(_parse(p, where) for p in pointers)
    if spec.paths:
        _resolve_shape(spec.shape, len(spec.paths), spec, spec.paths[0], _mapping_error)
    scalar_shape = _scalar_shape(spec.shape) if spec.path else None
    return _InputPlan(
        spec,
        DATATYPES[spec.datatype],
        tokens,
        oip_wire.tensor_header(spec.name, spec.datatype),
        scalar_shape,
        oip_wire.shape_field(scalar_shape or ()),
    )


def _scalar_shape(declared: tuple[int, ...]) -> list[int] | None:
    """What ``_resolve_shape`` gives for one value, or None where one value does not fit."""
    known = math.prod(d for d in declared if d != -1)
    if known != 1:  # one value fills the shape only when every other dimension is 1
        return None
    return [1 if d == -1 else d for d in declared]


def _parse(pointer: str, where: str) -> tuple[str, ...]:
    try:
        return parse_pointer(pointer)
    except PointerError as exc:
        _mapping_error(f"{where}: {exc}")


def _mapping_error(reason: str) -> NoReturn:
    raise FailedPrecondition(f"the model's tensor mapping is invalid: {reason}")


def _input_values(item: _InputPlan, payload: dict[str, Any]) -> tuple[bytes, list[Any]]:
    """Check and convert one input's values: its shape field on the wire, and the values.

    Nothing is written until every input has passed, so a payload that does not fit the
    mapping fails before any byte exists.
    """
    spec = item.spec
    if item.scalar_shape is not None:
        # One ``path``, and a shape one value fills: a scalar there needs no flattening and
        # no shape inference, and fails exactly as the general path would (position 0).
        value = _resolve_input(payload, spec, spec.path, item.tokens[0])
        if not isinstance(value, list):
            try:
                converted = _convert(value, item.datatype, spec.datatype)
            except _ElementError as exc:
                _element_error(spec, (spec.path,), (), 0, str(exc))
            return item.scalar_shape_wire, [converted]
    pointers = (spec.path,) if spec.path else spec.paths
    values: list[Any] = []
    found: tuple[int, ...] = ()
    for pointer, tokens in zip(pointers, item.tokens, strict=True):
        value = _resolve_input(payload, spec, pointer, tokens)
        if spec.paths:
            if isinstance(value, list | dict):
                raise InvalidArgument(
                    f"tensor {spec.name!r}: {pointer} must be a scalar, got a {json_type(value)}"
                )
            values.append(value)
        else:
            values, found = _flatten(value, spec.name, pointer)
    # A nested array must have the declared structure, not just the right number of elements.
    if len(found) > 1 and (
        len(found) != len(spec.shape)
        or any(d not in (-1, f) for d, f in zip(spec.shape, found, strict=True))
    ):
        _payload_error(
            f"tensor {spec.name!r}: {pointers[0]} has dimensions {list(found)}, "
            f"the model needs {list(spec.shape)}"
        )
    shape = _resolve_shape(spec.shape, len(values), spec, pointers[0], _payload_error)
    converted_values: list[Any] = []
    for position, value in enumerate(values):
        try:
            converted_values.append(_convert(value, item.datatype, spec.datatype))
        except _ElementError as exc:
            _element_error(spec, pointers, found, position, str(exc))
    return oip_wire.shape_field(shape), converted_values


def _resolve_input(
    payload: dict[str, Any], spec: TensorInput, pointer: str, tokens: tuple[str, ...]
) -> Any:
    try:
        return resolve(payload, tokens)
    except PointerError as exc:
        raise InvalidArgument(f"tensor {spec.name!r}: {pointer}: {exc}") from exc


def _payload_error(reason: str) -> NoReturn:
    raise InvalidArgument(reason)


def _resolve_shape(
    declared: tuple[int, ...],
    count: int,
    spec: TensorInput,
    pointer: str,
    fail: Callable[[str], NoReturn],
) -> list[int]:
    """Infer the one ``-1`` from ``count``, or check that ``count`` fills the shape exactly."""
    known = math.prod(d for d in declared if d != -1)
    if -1 in declared:
        if count % known:
            fail(
                f"tensor {spec.name!r}: {pointer} gives {count} values, "
                f"not a multiple of {known} for shape {list(declared)}"
            )
        return [count // known if d == -1 else d for d in declared]
    if count != known:
        fail(
            f"tensor {spec.name!r}: {pointer} gives {count} values, "
            f"shape {list(declared)} needs {known}"
        )
    return list(declared)


def _flatten(value: Any, name: str, pointer: str) -> tuple[list[Any], tuple[int, ...]]:
    """Flatten a scalar or rectangular nested array; return the elements and the array's shape.

    Iterative, level by level, so a hostile nesting depth cannot exhaust the stack.
    """
    if not isinstance(value, list):
        return [value], ()
    shape: list[int] = []
    level: list[list[Any]] = [value]
    while True:
        width = len(level[0])
        if any(len(row) != width for row in level):
            _payload_error(f"tensor {name!r}: {pointer} is a ragged array")
        shape.append(width)
        items = [item for row in level for item in row]
        nested = [isinstance(item, list) for item in items]
        if not items or not any(nested):
            return items, tuple(shape)
        if not all(nested) or len(shape) >= MAX_RANK:
            _payload_error(f"tensor {name!r}: {pointer} is a ragged or too deep array")
        level = items


class _ElementError(Exception):
    """One element does not fit its datatype; the caller adds where it was."""


def _convert(value: Any, datatype: Datatype, name: str) -> Any:
    """Return ``value`` in the form its contents field takes, or raise ``_ElementError``."""
    kind = datatype.kind
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "bytes":
        ok = isinstance(value, str)
        if ok:
            try:
                return value.encode("utf-8")
            except UnicodeEncodeError:
                raise _ElementError("is not encodable as UTF-8") from None
    else:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if kind == "int":
            ok = ok and isinstance(value, int)
            if ok and not datatype.low <= value <= datatype.high:
                raise _ElementError(f"is out of range for {name}")
        elif ok:
            try:
                value = float(value)
            except OverflowError:  # an integer beyond any double
                value = math.inf
            limit = FP32_MAX if datatype.code == "f" else math.inf
            if not (math.isfinite(value) and abs(value) <= limit):
                raise _ElementError(f"is out of range for {name}")
    if not ok:
        raise _ElementError(f"must be {_EXPECTED[kind]}, got a {json_type(value)}")
    return value


def _element_error(
    spec: TensorInput, pointers: tuple[str, ...], found: tuple[int, ...], position: int, reason: str
) -> NoReturn:
    """Raise naming the element's own pointer (``/features/0/2``), never its value."""
    if spec.paths:
        where = pointers[position]
    else:
        index: list[int] = []
        for dim in reversed(found):
            position, rest = divmod(position, dim)
            index.append(rest)
        where = pointers[0] + format_pointer(tuple(str(i) for i in reversed(index)))
    raise InvalidArgument(f"tensor {spec.name!r}: {where} {reason}")

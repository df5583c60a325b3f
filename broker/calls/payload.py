"""Parse a call's payload and hold it to the configured limits.

The payload arrives as JSON bytes (parsed with orjson: about 4 µs for 2 KB, against about
130 µs to convert a ``google.protobuf.Struct``) or, for clients that prefer it, as a Struct.
Either way it must be a JSON object no larger, deeper or wider than the limits allow; every
violation is an ``InvalidArgument`` that names the limit and its value, never the payload.

Notes on JSON edge cases, so that nobody has to rediscover them:
- Invalid UTF-8, lone surrogates, NaN/Infinity and numbers that overflow a double are rejected
  by orjson with a position; the message is passed on (it holds positions, not values).
- Integers beyond 64 bits are accepted by orjson as doubles (and lose precision): JSON allows
  them, and rejecting them would break callers that send large identifiers as numbers.
- A Struct can carry NaN and infinite doubles, which JSON cannot: they are refused as orjson
  refuses them in JSON text (found by the ``invoke_request`` fuzz harness; protobuf's
  ``MessageToDict`` raised a bare ``ValueError`` for them, which became ``INTERNAL``).
- orjson refuses nesting deeper than 1024 on its own; our depth limit (default 64) is checked
  after parsing with an explicit stack, so no input can make the broker recurse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from google.protobuf import json_format, struct_pb2

from broker.classify.walk import json_type_of
from broker.config import LimitsConfig
from broker.errors import InvalidArgument

JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class PayloadLimits:
    """Bounds on one payload: bytes, nesting depth and number of leaf fields."""

    max_bytes: int = 1024 * 1024
    max_depth: int = 64
    max_fields: int = 10_000

    @classmethod
    def from_config(cls, config: LimitsConfig) -> PayloadLimits:
        """Take the limits from the ``[limits]`` config section."""
        return cls(config.max_payload_bytes, config.max_depth, config.max_fields)


def parse_json_payload(data: bytes, limits: PayloadLimits) -> JsonObject:
    """Parse JSON bytes into an object, enforcing every limit."""
    if len(data) > limits.max_bytes:
        raise InvalidArgument(
            f"payload is {len(data)} bytes, over the limit of {limits.max_bytes} bytes"
        )
    if not data:
        raise InvalidArgument("payload is empty: send a JSON object")
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"payload is not valid JSON: {exc}") from None
    return check_payload(value, limits)


def parse_struct_payload(struct: struct_pb2.Struct, limits: PayloadLimits) -> JsonObject:
    """Convert a protobuf Struct payload into an object, enforcing every limit."""
    size = struct.ByteSize()
    if size > limits.max_bytes:
        raise InvalidArgument(
            f"payload is {size} bytes, over the limit of {limits.max_bytes} bytes"
        )
    try:
        value = json_format.MessageToDict(struct)
    except ValueError:  # NaN or an infinity in a number_value: not representable in JSON
        raise InvalidArgument(
            "payload holds a NaN or infinite number, which JSON cannot carry"
        ) from None
    return check_payload(value, limits)


def check_payload(value: Any, limits: PayloadLimits) -> JsonObject:
    """Check that a parsed value is an object within the depth and field-count limits.

    Leaves are scalars and empty containers; depth counts containers, so ``{"a": 1}`` has
    depth 1. The walk uses an explicit stack and stops at the first violation.
    """
    if not isinstance(value, dict):
        raise InvalidArgument(f"payload must be a JSON object, not a JSON {json_type_of(value)}")
    fields = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limits.max_depth:
            raise InvalidArgument(
                f"payload is nested deeper than the limit of {limits.max_depth} levels"
            )
        children = node.values() if isinstance(node, dict) else node
        if not children:
            fields += 1
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
            else:
                fields += 1
        if fields > limits.max_fields:
            raise InvalidArgument(f"payload has more than the limit of {limits.max_fields} fields")
    return value


def dump_json(value: JsonObject) -> bytes:
    """Serialise an answer object to JSON bytes."""
    return orjson.dumps(value)


def to_struct(value: JsonObject) -> struct_pb2.Struct:
    """Convert an answer object into a protobuf Struct (for callers that sent a Struct)."""
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct

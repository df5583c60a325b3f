"""Payload parsing and limits: every violation names the limit, never the payload."""

from __future__ import annotations

import math

import orjson
import pytest
from google.protobuf import struct_pb2

from broker.calls.payload import (
    PayloadLimits,
    check_payload,
    parse_json_payload,
    parse_struct_payload,
)
from broker.errors import InvalidArgument

LIMITS = PayloadLimits(max_bytes=1000, max_depth=4, max_fields=10)
SECRET = "s3cr3t-value-never-echoed"


def test_parses_an_object() -> None:
    assert parse_json_payload(b'{"a": {"b": [1, 2]}}', LIMITS) == {"a": {"b": [1, 2]}}


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "empty"),
        (b"x" * 1001, "1001 bytes, over the limit of 1000 bytes"),
        (b'{"a": "' + SECRET.encode() + b'"', "not valid JSON"),
        (b'"' + SECRET.encode() + b'"', "must be a JSON object, not a JSON string"),
        (b"[]", "not a JSON array"),
        (b"null", "not a JSON null"),
        (b'{"a": NaN}', "not valid JSON"),
        (b'{"a": 1e999}', "not valid JSON"),
        (b'{"a": "\xed\xa0\x80"}', "not valid JSON"),
        (b'{"a": {"b": {"c": {"d": {"e": 1}}}}}', "deeper than the limit of 4 levels"),
        (orjson.dumps({f"k{i}": i for i in range(11)}), "more than the limit of 10 fields"),
    ],
)
def test_bad_payloads_name_the_problem_not_the_value(data: bytes, needle: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_json_payload(data, LIMITS)
    assert needle in exc.value.message
    assert SECRET not in exc.value.message


def test_depth_counts_containers() -> None:
    four_deep = {"a": {"b": {"c": {"d": 1}}}}
    assert check_payload(four_deep, LIMITS) == four_deep
    with pytest.raises(InvalidArgument):
        check_payload({"a": {"b": {"c": {"d": [1]}}}}, LIMITS)


def test_empty_containers_count_as_fields() -> None:
    check_payload({f"k{i}": {} for i in range(10)}, LIMITS)
    with pytest.raises(InvalidArgument, match="fields"):
        check_payload({f"k{i}": [] for i in range(11)}, LIMITS)


def test_very_deep_input_does_not_recurse() -> None:
    deep: dict[str, object] = {}
    node = deep
    for _ in range(100_000):
        child: dict[str, object] = {}
        node["x"] = child
        node = child
    with pytest.raises(InvalidArgument, match="deeper"):
        check_payload(deep, PayloadLimits(max_depth=64))


def test_orjson_own_nesting_cap_is_an_invalid_argument() -> None:
    data = b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}"
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        parse_json_payload(data, PayloadLimits(max_bytes=20_000))


def test_struct_payload_is_held_to_the_same_limits() -> None:
    struct = struct_pb2.Struct()
    struct.update({"a": {"b": {"c": {"d": {"e": 1}}}}})
    with pytest.raises(InvalidArgument, match="deeper"):
        parse_struct_payload(struct, LIMITS)
    small = struct_pb2.Struct()
    small.update({"a": "b"})
    assert parse_struct_payload(small, LIMITS) == {"a": "b"}


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_struct_payload_with_a_non_finite_number_is_an_invalid_argument(number: float) -> None:
    # Found by the invoke_request fuzz harness: MessageToDict raised a bare ValueError (INTERNAL).
    struct = struct_pb2.Struct()
    struct.update({"ok": 1, "items": [{"score": 0.5}]})
    struct.fields["items"].list_value.values[0].struct_value.fields["score"].number_value = number
    with pytest.raises(InvalidArgument, match="NaN or infinite"):
        parse_struct_payload(struct, LIMITS)

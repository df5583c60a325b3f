"""RFC 6901 JSON Pointer: parsing, escapes, lookup and placement."""

from __future__ import annotations

from typing import Any

import pytest

from broker.runtimes.json_pointer import (
    PointerError,
    format_pointer,
    json_type,
    parse_pointer,
    place,
    resolve,
)

# The example document and expectations of RFC 6901 section 5.
RFC_DOC: dict[str, Any] = {
    "foo": ["bar", "baz"],
    "": 0,
    "a/b": 1,
    "c%d": 2,
    "e^f": 3,
    "g|h": 4,
    "i\\j": 5,
    'k"l': 6,
    " ": 7,
    "m~n": 8,
}


@pytest.mark.parametrize(
    ("pointer", "expected"),
    [
        ("", RFC_DOC),
        ("/foo", ["bar", "baz"]),
        ("/foo/0", "bar"),
        ("/", 0),
        ("/a~1b", 1),
        ("/c%d", 2),
        ("/e^f", 3),
        ("/g|h", 4),
        ("/i\\j", 5),
        ('/k"l', 6),
        ("/ ", 7),
        ("/m~0n", 8),
    ],
)
def test_rfc6901_examples(pointer: str, expected: Any) -> None:
    assert resolve(RFC_DOC, parse_pointer(pointer)) == expected


def test_tilde_escapes_decode_in_the_right_order() -> None:
    # "~01" is "~1" (a tilde then a one), not "/"
    assert parse_pointer("/~01") == ("~1",)
    assert parse_pointer("/~10") == ("/0",)


@pytest.mark.parametrize("pointer", ["a", "a/b", "/~", "/a~2", "/~a", "/x~"])
def test_malformed_pointers(pointer: str) -> None:
    with pytest.raises(PointerError):
        parse_pointer(pointer)


@pytest.mark.parametrize("tokens", [(), ("a",), ("a/b", "~", ""), ("~1", "0")])
def test_format_is_the_inverse_of_parse(tokens: tuple[str, ...]) -> None:
    assert parse_pointer(format_pointer(tokens)) == tokens


@pytest.mark.parametrize(
    ("pointer", "reason"),
    [
        ("/missing", "no member at /missing"),
        ("/foo/2", "out of range at /foo/2"),
        ("/foo/-", "/foo/- is not an array index"),
        ("/foo/01", "/foo/01 is not an array index"),
        ("/foo/+1", "not an array index"),
        ("/foo/0/x", "/foo/0 is a string, not a container"),
        ("/ /x", "/  is a number, not a container"),
    ],
)
def test_lookup_failures_name_the_pointer(pointer: str, reason: str) -> None:
    with pytest.raises(PointerError) as info:
        resolve(RFC_DOC, parse_pointer(pointer))
    assert reason in str(info.value)


def test_lookup_errors_never_contain_values() -> None:
    doc = {"secret": "hunter2-value"}
    with pytest.raises(PointerError) as info:
        resolve(doc, parse_pointer("/secret/0"))
    assert "hunter2" not in str(info.value)


def test_place_creates_objects_and_refuses_collisions() -> None:
    answer: dict[str, Any] = {}
    place(answer, ("a", "b"), 1)
    place(answer, ("a", "c"), 2)
    assert answer == {"a": {"b": 1, "c": 2}}
    with pytest.raises(PointerError, match="taken"):
        place(answer, ("a", "b"), 3)
    with pytest.raises(PointerError, match="taken"):
        place(answer, ("a", "b", "x"), 3)
    with pytest.raises(PointerError, match="whole answer"):
        place(answer, (), 3)


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (None, "null"),
        (True, "boolean"),
        (1, "number"),
        (1.5, "number"),
        ("s", "string"),
        ([], "array"),
        ({}, "object"),
        (object(), "non-JSON value"),
    ],
)
def test_json_type(value: object, name: str) -> None:
    assert json_type(value) == name

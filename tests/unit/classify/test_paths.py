"""JSON Pointers and shape paths stay exact whatever the keys contain."""

from __future__ import annotations

import pytest

from broker.classify.paths import (
    ANY_INDEX,
    PointerError,
    escape_shape_token,
    escape_token,
    is_pointer,
    is_shape_path,
    parse_pointer,
    parse_shape_path,
    pointer,
    shape_path,
)
from broker.errors import InvalidArgument

HOSTILE_KEYS = [
    "a.b",
    "a[0]",
    "~",
    "/",
    "",
    "~0",
    "~1",
    "a/b~c",
    "*",
    "a*b",
    "~2",
    "é字🙂",
    " ",
    "0",
]


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_pointer_round_trips_every_hostile_key(key: str) -> None:
    text = pointer(["outer", key, 3])
    assert parse_pointer(text) == ("outer", int(key) if key == "0" else key, 3)
    assert pointer(parse_pointer(text)) == text


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_shape_path_round_trips_every_hostile_key(key: str) -> None:
    text = shape_path(["outer", key, 3])
    assert parse_shape_path(text) == ("outer", key, ANY_INDEX)


def test_rfc6901_examples() -> None:
    assert escape_token("a/b") == "a~1b"
    assert escape_token("m~n") == "m~0n"
    assert parse_pointer("") == ()
    assert parse_pointer("/") == ("",)
    assert parse_pointer("/a~1b") == ("a/b",)
    assert parse_pointer("/m~0n") == ("m~n",)
    assert parse_pointer("/~01") == ("~1",)  # ~1 is decoded before ~0, never after
    assert parse_pointer("/foo/0") == ("foo", 0)
    assert parse_pointer("/foo/01") == ("foo", "01")  # not an index: leading zero


def test_distinct_keys_give_distinct_paths() -> None:
    pointers = {pointer([k]) for k in HOSTILE_KEYS}
    shapes = {shape_path([k]) for k in HOSTILE_KEYS}
    assert len(pointers) == len(HOSTILE_KEYS) == len(shapes)


def test_literal_star_key_differs_from_any_index() -> None:
    assert shape_path(["items", 0]) == "/items/*"
    assert shape_path(["items", "*"]) == "/items/~2"
    assert escape_shape_token("a*b") == "a~2b"
    assert parse_shape_path("/items/~2") == ("items", "*")
    assert parse_shape_path("/items/*") == ("items", ANY_INDEX)


@pytest.mark.parametrize("bad", ["a", "a/b", "/~", "/a~2", "/~x", "/a/~"])
def test_malformed_pointers_are_refused(bad: str) -> None:
    with pytest.raises(PointerError):
        parse_pointer(bad)
    assert not is_pointer(bad)


@pytest.mark.parametrize("bad", ["x", "/a*", "/*a", "/~3", "/a/~"])
def test_malformed_shape_paths_are_refused(bad: str) -> None:
    with pytest.raises(PointerError):
        parse_shape_path(bad)
    assert not is_shape_path(bad)


def test_errors_are_invalid_argument_and_do_not_echo_the_text() -> None:
    secret = "/4111111111111111~x"
    with pytest.raises(InvalidArgument) as info:
        parse_pointer(secret)
    assert "4111" not in str(info.value)


def test_negative_and_bool_indices_are_refused() -> None:
    with pytest.raises(PointerError):
        pointer([-1])
    with pytest.raises(PointerError):
        pointer([True])


def test_parse_pointer_is_cached_but_errors_are_raised_every_time() -> None:
    first = parse_pointer("/items/0/note")
    assert parse_pointer("/items/0/note") is first  # an immutable tuple, safe to share
    for _ in range(2):
        with pytest.raises(PointerError):
            parse_pointer("/bad~2escape")

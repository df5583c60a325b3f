"""The walk reaches every leaf, in order, without recursion."""

from __future__ import annotations

from typing import Any

import pytest

from broker.classify.walk import Leaf, walk


def test_every_leaf_in_document_order_with_types() -> None:
    doc = {"s": "x", "n": 1, "f": 1.5, "b": True, "z": None, "o": {}, "a": [], "l": [{"k": 2}, 3]}
    assert [(leaf.pointer, leaf.shape_path, leaf.json_type) for leaf in walk(doc)] == [
        ("/s", "/s", "string"),
        ("/n", "/n", "number"),
        ("/f", "/f", "number"),
        ("/b", "/b", "boolean"),
        ("/z", "/z", "null"),
        ("/o", "/o", "object"),
        ("/a", "/a", "array"),
        ("/l/0/k", "/l/*/k", "number"),
        ("/l/1", "/l/*", "number"),
    ]


@pytest.mark.parametrize("scalar", ["x", 0, None, False, 2.5, {}, []])
def test_a_scalar_or_empty_document_is_one_leaf_at_the_root(scalar: Any) -> None:
    assert [(leaf.pointer, leaf.shape_path) for leaf in walk(scalar)] == [("", "")]


def test_hostile_keys_are_escaped() -> None:
    doc = {"a.b": {"a[0]": {"~": {"/": {"": {"*": {"字": 1}}}}}}}
    (leaf,) = walk(doc)
    assert leaf.pointer == "/a.b/a[0]/~0/~1//*/字"
    assert leaf.shape_path == "/a.b/a[0]/~0/~1//~2/字"


def test_values_are_passed_through() -> None:
    assert list(walk({"k": "v"})) == [Leaf("/k", "/k", "string", "v")]


def test_depth_ten_thousand_does_not_recurse() -> None:
    deep: Any = "bottom"
    for i in range(10_000):
        deep = [deep] if i % 2 else {"k": deep}
    (leaf,) = walk(deep)
    assert leaf.value == "bottom"
    assert leaf.pointer.count("/") == 10_000
    assert leaf.shape_path.count("*") == 5_000


def test_non_json_values_are_refused() -> None:
    with pytest.raises(TypeError):
        list(walk({"k": (1, 2)}))
    with pytest.raises(TypeError):
        list(walk({1: "v"}))

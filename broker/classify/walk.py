"""Walk every leaf of a parsed JSON value, without recursion, in document order.

Payloads come from callers, so their depth is the caller's choice: a recursive walk would turn a
10,000-deep array into a ``RecursionError`` (or worse, a crashed worker). This walk keeps an
explicit stack of iterators, so its memory grows with the depth and nothing else does.

What counts as a leaf:

- every string, number, boolean and null;
- every **empty** object and **empty** array. They carry no value, but they are still fields that
  a policy may want to drop or that a schema may label, and an enforcement step that only saw
  non-empty containers would silently pass them through.

Non-empty containers are not leaves: their leaves are reported instead. Object members are
visited in the dict's order (the order of the JSON text, for ``json`` and ``orjson``), array
elements by index.

Types are JSON's names: ``string``, ``number`` (ints and floats alike, because a payload that came
as a ``google.protobuf.Struct`` has only doubles, and the plan cache must not tell them apart),
``boolean``, ``null``, ``object``, ``array``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

from broker.classify.paths import escape_shape_token, escape_token

JsonType = Literal["string", "number", "boolean", "null", "object", "array"]

_SCALAR_TYPES: Final[dict[type, JsonType]] = {
    str: "string",
    bool: "boolean",
    int: "number",
    float: "number",
    type(None): "null",
}


@dataclass(frozen=True, slots=True)
class Leaf:
    """One leaf field: where it is, the shape path a policy sees, its JSON type and its value.

    ``value`` is the original object (an empty ``dict``/``list`` for empty containers). It is
    here so the classifier can scan strings; it must never be copied into anything that leaves
    the process.
    """

    pointer: str
    shape_path: str
    json_type: JsonType
    value: Any


def json_type_of(value: object) -> JsonType:
    """The JSON type name of ``value``; ``TypeError`` for anything a JSON parser cannot produce."""
    found = _SCALAR_TYPES.get(type(value))
    if found is not None:
        return found
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def walk(value: Any) -> Iterator[Leaf]:
    """Yield every leaf of ``value`` (see the module docstring), in document order.

    Raises ``TypeError`` for a value no JSON parser produces (a tuple, a set, a non-string key),
    rather than guessing how a policy should see it.
    """
    for pointer, shape, kind, item in leaves(value):
        yield Leaf(pointer, shape, kind, item)


def leaves(value: Any) -> Iterator[tuple[str, str, JsonType, Any]]:
    """``walk`` as plain ``(pointer, shape_path, json_type, value)`` tuples.

    The classifier runs this on every call, twice (request and answer), so per-leaf work is
    kept to what depends on the leaf: the open container's pointer and shape path are kept
    joined, extended when a container is entered and joined again only when a container that
    was returned to has another child (not once per leaf, as a join over the whole stack would
    be), and keys are escaped only when they hold a character that needs it. Only the current
    container's joined paths are kept, so memory still grows with the depth alone.
    """
    kind = json_type_of(value)
    if kind not in ("object", "array") or not value:
        yield "", "", kind, value
        return
    # Parallel stacks: the escaped pointer token and shape token of each open container below
    # the root, and the iterator over each open container's children.
    ptr_tokens: list[str] = []
    shape_tokens: list[str] = []
    frames: list[Iterator[tuple[str, str, Any]]] = [_children(value)]
    ptr_prefix = shape_prefix = ""  # the joined tokens: the open container's own paths
    stale = False  # set when a container is left; the join waits until the paths are needed
    while frames:
        for ptr_tok, shape_tok, item in frames[-1]:
            if stale:
                ptr_prefix, shape_prefix = "".join(ptr_tokens), "".join(shape_tokens)
                stale = False
            kind = json_type_of(item)
            if kind in ("object", "array") and item:
                ptr_tokens.append(ptr_tok)
                shape_tokens.append(shape_tok)
                frames.append(_children(item))
                ptr_prefix += ptr_tok
                shape_prefix += shape_tok
                break
            yield ptr_prefix + ptr_tok, shape_prefix + shape_tok, kind, item
        else:
            frames.pop()
            if ptr_tokens:
                ptr_tokens.pop()
                shape_tokens.pop()
                stale = True


def _children(container: dict[Any, Any] | list[Any]) -> Iterator[tuple[str, str, Any]]:
    """The children of one container as (pointer token, shape token, value), leading ``/`` on."""
    if isinstance(container, list):
        for index, item in enumerate(container):
            yield f"/{index}", "/*", item
        return
    for key, item in container.items():
        if not isinstance(key, str):
            raise TypeError(f"object keys must be strings, not {type(key).__name__}")
        if "~" in key or "/" in key or "*" in key:
            yield "/" + escape_token(key), "/" + escape_shape_token(key), item
        else:
            token = "/" + key
            yield token, token, item

"""JSON Pointer (RFC 6901) for the tensor mapping: parse, look up, and place values.

Mappings address payload fields and answer slots with JSON Pointers because they are exact
(``/a~1b`` is the key ``a/b``) and need no quoting rules of our own. Errors here are plain
``PointerError`` carrying a short reason; the mapping code turns them into broker errors that
name the tensor and the pointer. A reason never contains a payload value, only the pointer and
the JSON type found, so it is safe to show to the caller and to log.
"""

from __future__ import annotations

import re
from typing import Any

# RFC 6901 section 4: an array index is "0" or digits without a leading zero.
_INDEX_RE = re.compile(r"0|[1-9][0-9]*")
_BAD_ESCAPE_RE = re.compile(r"~(?![01])")
_JSON_TYPES: tuple[tuple[type | tuple[type, ...], str], ...] = (
    ((int, float), "number"),
    (str, "string"),
    ((list, tuple), "array"),
    (dict, "object"),
)


class PointerError(ValueError):
    """A pointer is malformed, or the document has no value where it points."""


def parse_pointer(pointer: str) -> tuple[str, ...]:
    """Split a pointer into unescaped reference tokens; ``""`` (the whole document) gives ``()``.

    ``~1`` becomes ``/`` and then ``~0`` becomes ``~``, in that order, so ``~01`` is ``~1``
    (RFC 6901 section 4). A ``~`` followed by anything else is malformed.
    """
    if pointer == "":
        return ()
    if not pointer.startswith("/"):
        raise PointerError("a JSON Pointer must be empty or start with '/'")
    if _BAD_ESCAPE_RE.search(pointer):
        raise PointerError("'~' must be followed by '0' or '1' in a JSON Pointer")
    return tuple(t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/"))


def json_type(value: object) -> str:
    """The JSON type name of a value, for messages that must not show the value itself."""
    if isinstance(value, bool):  # before int: bool is a subclass of int
        return "boolean"
    for types, name in _JSON_TYPES:
        if isinstance(value, types):
            return name
    return "null" if value is None else "non-JSON value"


def resolve(document: Any, tokens: tuple[str, ...]) -> Any:
    """Return the value the parsed pointer designates; ``PointerError`` if there is none."""
    current = document
    for depth, token in enumerate(tokens):
        if isinstance(current, dict):
            if token not in current:
                raise PointerError(f"no member at {_prefix(tokens, depth + 1)}")
            current = current[token]
        elif isinstance(current, list):
            if not _INDEX_RE.fullmatch(token):
                raise PointerError(f"{_prefix(tokens, depth + 1)} is not an array index")
            index = int(token)
            if index >= len(current):
                raise PointerError(f"array index out of range at {_prefix(tokens, depth + 1)}")
            current = current[index]
        else:
            raise PointerError(
                f"{_prefix(tokens, depth)} is a {json_type(current)}, not a container"
            )
    return current


def place(document: dict[str, Any], tokens: tuple[str, ...], value: Any) -> None:
    """Set ``value`` at the parsed pointer, creating intermediate objects as needed.

    Only objects are created or traversed: an answer slot inside an array would depend on the
    array's length, which the mapping cannot know. A slot that is already taken is an error, so
    two outputs can never overwrite each other silently.
    """
    if not tokens:
        raise PointerError("an output cannot replace the whole answer")
    current: dict[str, Any] = document
    for depth, token in enumerate(tokens[:-1]):
        child = current.setdefault(token, {})
        if not isinstance(child, dict):
            raise PointerError(f"{_prefix(tokens, depth + 1)} is taken by another output")
        current = child
    if tokens[-1] in current:
        raise PointerError(f"{_prefix(tokens, len(tokens))} is taken by another output")
    current[tokens[-1]] = value


def format_pointer(tokens: tuple[str, ...]) -> str:
    """The inverse of ``parse_pointer``: escape ``~`` then ``/`` and join."""
    return "".join("/" + t.replace("~", "~0").replace("/", "~1") for t in tokens)


def _prefix(tokens: tuple[str, ...], length: int) -> str:
    return format_pointer(tokens[:length]) or "the document root"

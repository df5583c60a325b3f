"""Field paths: JSON Pointers (RFC 6901) for one leaf, and shape paths for a policy.

A payload key may contain anything: dots, brackets, slashes, tildes, stars, nothing at all, any
unicode. Dotted paths such as ``customer.email`` or ``items[0].note`` become ambiguous as soon as
a key holds ``.`` or ``[``, and a policy that confuses two fields is a policy that leaks. So every
path here is a JSON Pointer, whose escaping is exact and standard:

- ``~`` is written ``~0`` and ``/`` is written ``~1`` (in that order), nothing else is escaped;
- ``""`` is the whole document, ``/`` is the member with the empty key, ``/a~1b`` is key ``a/b``.

A **pointer** names one value: array elements by their index (``/items/0/note``).

A **shape path** names a field whatever array position it occupies, so that a policy (and the
plan cache) sees the same path for every element: each array index is replaced by ``*``
(``/items/*/note``). To keep a literal object key ``*`` distinct from "any index", shape paths add
one escape to the two of RFC 6901: a ``*`` character inside a key is written ``~2``. The rule is
therefore simple: in a shape path an unescaped ``*`` only ever appears as a whole token and always
means "any array index"; the key ``*`` is ``/~2`` and the key ``a*b`` is ``/a~2b``. ``~2`` is not
valid in a plain pointer, where ``*`` needs no escape.

Errors are ``PointerError`` (an ``InvalidArgument``): the message says what is wrong and where
(a character offset), never echoing the text, because buyer-supplied keys may themselves be data.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterable
from typing import Final

from broker.errors import InvalidArgument

#: The token that stands for "any array index" in a shape path.
WILDCARD: Final = "*"

# RFC 6901 section 4: an array index is "0" or digits without a leading zero.
_INDEX_RE: Final = re.compile(r"0|[1-9][0-9]*")
_POINTER_BAD_ESCAPE: Final = re.compile(r"~(?![01])")
_SHAPE_BAD_ESCAPE: Final = re.compile(r"~(?![012])")


class PointerError(InvalidArgument):
    """A pointer or shape path is malformed; the message gives the offset, never the text."""


class AnyIndex(enum.Enum):
    """The type of ``ANY_INDEX``: a parsed shape path's "any array index" token."""

    ANY_INDEX = "*"


#: What ``parse_shape_path`` returns for a ``*`` token; the key ``"*"`` stays a ``str``.
ANY_INDEX: Final = AnyIndex.ANY_INDEX


def escape_token(key: str) -> str:
    """Escape one object key as a JSON Pointer reference token (``~`` -> ``~0``, ``/`` -> ``~1``).

    The order matters: escaping ``~`` first means the ``~`` introduced for ``/`` is not escaped
    again, which is what makes the encoding reversible.
    """
    return key.replace("~", "~0").replace("/", "~1")


def escape_shape_token(key: str) -> str:
    """Escape one object key for a shape path: as ``escape_token``, and ``*`` -> ``~2``."""
    return key.replace("~", "~0").replace("/", "~1").replace("*", "~2")


def pointer(parts: Iterable[str | int]) -> str:
    """Build a pointer from keys (``str``) and array indices (``int``); ``()`` gives ``""``.

    An ``int`` must be non-negative: RFC 6901 has no negative indices.
    """
    out: list[str] = []
    for part in parts:
        if isinstance(part, int):
            if isinstance(part, bool) or part < 0:
                raise PointerError("an array index in a pointer must be an int >= 0")
            out.append(f"/{part}")
        else:
            out.append("/" + escape_token(part))
    return "".join(out)


def shape_path(parts: Iterable[str | int | AnyIndex]) -> str:
    """Build a shape path from the same parts as ``pointer``: every index becomes ``*``."""
    out: list[str] = []
    for part in parts:
        if isinstance(part, int | AnyIndex):
            out.append("/*")
        else:
            out.append("/" + escape_shape_token(part))
    return "".join(out)


@functools.lru_cache(maxsize=4096)
def parse_pointer(text: str) -> tuple[str | int, ...]:
    """Split a pointer into unescaped tokens; a token in array-index form comes back as ``int``.

    Cached (the result is an immutable tuple): enforcement parses the pointer of every field it
    acts on, on every call and in both directions, and a model's field pointers repeat from call
    to call. The cache is bounded, and pointers are no secret (they appear in plans and logs).

    RFC 6901 leaves it to the document whether ``/0`` is an index or the key ``"0"``; an ``int``
    here means "index if the container is an array, key ``str(token)`` if it is an object", and
    ``pointer(parse_pointer(p)) == p`` holds for every valid ``p``. Raises ``PointerError`` if
    ``text`` is neither empty nor starts with ``/``, or has a ``~`` not followed by ``0``/``1``.
    """
    if text == "":
        return ()
    if not text.startswith("/"):
        raise PointerError("a JSON Pointer must be empty or start with '/'")
    bad = _POINTER_BAD_ESCAPE.search(text)
    if bad is not None:
        raise PointerError(
            f"'~' at offset {bad.start()} must be followed by '0' or '1' in a JSON Pointer"
        )
    tokens: list[str | int] = []
    for raw in text[1:].split("/"):
        if _INDEX_RE.fullmatch(raw):
            tokens.append(int(raw))
        else:
            tokens.append(raw.replace("~1", "/").replace("~0", "~"))
    return tuple(tokens)


def parse_shape_path(text: str) -> tuple[str | AnyIndex, ...]:
    """Split a shape path into unescaped object keys and ``ANY_INDEX`` for each ``*`` token.

    The literal key ``*`` (written ``~2``) comes back as the string ``"*"``, which can never be
    confused with ``ANY_INDEX``. Raises ``PointerError`` for a bad escape, or for a raw ``*``
    that is part of a longer token.
    """
    if text == "":
        return ()
    if not text.startswith("/"):
        raise PointerError("a shape path must be empty or start with '/'")
    bad = _SHAPE_BAD_ESCAPE.search(text)
    if bad is not None:
        raise PointerError(
            f"'~' at offset {bad.start()} must be followed by '0', '1' or '2' in a shape path"
        )
    out: list[str | AnyIndex] = []
    offset = 1
    for raw in text[1:].split("/"):
        if raw == WILDCARD:
            out.append(ANY_INDEX)
        elif WILDCARD in raw:
            raise PointerError(
                f"raw '*' in the token at offset {offset} of a shape path: write '~2' for a "
                "literal '*' in a key, or use '*' alone for any array index"
            )
        else:
            out.append(raw.replace("~2", "*").replace("~1", "/").replace("~0", "~"))
        offset += len(raw) + 1
    return tuple(out)


def is_pointer(text: str) -> bool:
    """True if ``text`` is a well-formed RFC 6901 pointer."""
    return text == "" or (text.startswith("/") and _POINTER_BAD_ESCAPE.search(text) is None)


def is_shape_path(text: str) -> bool:
    """True if ``text`` is a well-formed shape path (see the module docstring)."""
    try:
        parse_shape_path(text)
    except PointerError:
        return False
    return True

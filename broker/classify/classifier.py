"""Classify every leaf of a payload: where it is, its type, and the labels that apply to it.

Labels come from three sources and are **unioned**; no source can remove a label another one
gave, so there is no precedence to get wrong:

- ``schema_labels``: the vendor's declared field schema (registry);
- ``buyer_labels``: labels the buyer sends with the call;
- what the detectors find inside the value (the labels of its spans).

A key of ``schema_labels`` or ``buyer_labels`` is either a JSON Pointer (``/items/0/note``: that
one element) or a shape path (``/items/*/note``: every element); see ``paths``. The key applies
to the leaf it names **and to every leaf below it**, so ``{"/customer": ["pii"]}`` labels the
whole customer object. Within one document a string cannot be the pointer of one node and the
shape path of another (at the first token where the two readings would differ, the same node
would have to be both an object and an array), so trying both readings never mislabels.
A key that names no field is reported in ``Classification.unmatched_keys`` (useful for a
preview), not treated as an error: schemas describe optional fields.

Strings are scanned in full up to the detector set's cap; integers are scanned as their decimal
text (card and phone numbers do arrive as JSON numbers), so a span on a number indexes
``str(value)``. Floats, booleans and null are never scanned.

The result holds pointers, shape paths, types, labels and span offsets: never a value. It is
safe to log, to put in a policy input or an audit entry (keys, being part of paths, are the one
piece of caller text that does appear).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from broker.classify.detectors import DetectorSet, Span, default_detector_set
from broker.classify.paths import PointerError, is_pointer, is_shape_path
from broker.classify.walk import JsonType, leaves
from broker.errors import InvalidArgument

_LABEL_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}")
_NO_LABELS: Final[Mapping[str, Iterable[str]]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class FieldInfo:
    """One classified leaf: its pointer, its shape path, its JSON type, labels and spans."""

    pointer: str
    shape_path: str
    type: JsonType
    labels: frozenset[str]
    spans: tuple[Span, ...]


@dataclass(frozen=True, slots=True)
class Classification:
    """Every leaf in document order, and for each detected label the pointers where it occurs.

    ``entities`` holds detector labels only (entities found inside values, which an entity
    action applies to by span); schema and buyer labels describe whole fields and live in
    ``FieldInfo.labels``. ``unmatched_keys`` lists label keys that named no field, sorted.
    """

    fields: list[FieldInfo]
    entities: dict[str, list[str]]
    unmatched_keys: tuple[str, ...] = ()


class _LabelIndex:
    """Schema and buyer labels by path, looked up for a leaf and each of its ancestors.

    Only ancestors at depths where some key exists are looked up, so a leaf costs a few dict
    lookups however deep it sits.
    """

    def __init__(self, *sources: Mapping[str, Iterable[str]]) -> None:
        by_key: dict[str, set[str]] = {}
        for source in sources:
            for key, labels in source.items():
                _check_key(key)
                bucket = by_key.setdefault(key, set())
                for label in [labels] if isinstance(labels, str) else labels:
                    if not isinstance(label, str) or not _LABEL_RE.fullmatch(label):
                        raise InvalidArgument(
                            "a label must be 1-128 characters of letters, digits, '_', '.', ':'"
                            " or '-', starting with a letter or digit"
                        )
                    bucket.add(label)
        self._labels = {key: frozenset(v) for key, v in by_key.items()}
        self._depths = sorted({key.count("/") for key in self._labels})
        self.used: set[str] = set()

    def labels_for(self, pointer: str, shape: str) -> set[str]:
        """Labels of every key equal to, or an ancestor of, the leaf's pointer or shape path."""
        found: set[str] = set()
        if not self._labels:
            return found
        self._add(pointer, found)
        if shape != pointer:
            self._add(shape, found)
        return found

    def _add(self, path: str, found: set[str]) -> None:
        """Add the labels of ``path`` cut after each key depth (tokens are escaped, so every
        ``/`` starts one); inline rather than a generator, as it runs for every leaf."""
        tokens = path.count("/")
        end = 0  # where the prefix of ``seen`` tokens ends
        seen = 0
        for depth in self._depths:
            if depth > tokens:
                return
            while seen < depth:
                following = path.find("/", end + 1)
                end = len(path) if following == -1 else following
                seen += 1
            prefix = path[:end]
            labels = self._labels.get(prefix)
            if labels is not None:
                found |= labels
                self.used.add(prefix)

    def unmatched(self) -> tuple[str, ...]:
        """Keys that named no leaf and no ancestor of a leaf."""
        return tuple(sorted(set(self._labels) - self.used))


def classify(
    payload: Any,
    *,
    schema_labels: Mapping[str, Iterable[str]] = _NO_LABELS,
    buyer_labels: Mapping[str, Iterable[str]] = _NO_LABELS,
    detectors: DetectorSet | None = None,
) -> Classification:
    """Classify every leaf of ``payload`` (a parsed JSON value); see the module docstring.

    Raises ``PointerError`` (an ``InvalidArgument``) for a label key that is neither a pointer
    nor a shape path, ``InvalidArgument`` for a malformed label name, and ``TypeError`` for a
    payload that is not a parsed JSON value.
    """
    index = _LabelIndex(schema_labels, buyer_labels)
    scan = (detectors if detectors is not None else default_detector_set()).scan
    fields: list[FieldInfo] = []
    entities: dict[str, list[str]] = {}
    for pointer, shape, kind, value in leaves(payload):
        spans: tuple[Span, ...] = ()
        if kind == "string":
            if value:
                spans = tuple(scan(value))
        elif kind == "number" and isinstance(value, int):  # "number" excludes bool
            spans = tuple(scan(str(value)))
        labels = index.labels_for(pointer, shape)
        if not labels and not spans and len(pointer) <= _SHARED_PATH_CHARS:
            fields.append(_unlabelled(pointer, shape, kind))
            continue
        for span in spans:
            labels.add(span.label)
            found = entities.setdefault(span.label, [])
            if not found or found[-1] != pointer:
                found.append(pointer)
        fields.append(FieldInfo(pointer, shape, kind, frozenset(labels), spans))
    return Classification(fields, entities, index.unmatched())


_SHARED_PATH_CHARS: Final = 256  # pointers longer than this get a FieldInfo of their own


@functools.lru_cache(maxsize=4096)
def _unlabelled(pointer: str, shape: str, kind: JsonType) -> FieldInfo:
    """The ``FieldInfo`` of a leaf without labels or spans, one object per path and type.

    Most leaves of most payloads are such, their paths repeat from call to call, and a frozen
    dataclass costs more to build than this lookup; ``FieldInfo`` is immutable, so sharing it
    is safe. Bounded: 4096 entries of short paths (paths, not values, as everywhere here).
    """
    return FieldInfo(pointer, shape, kind, frozenset(), ())


def _check_key(key: object) -> None:
    if not isinstance(key, str) or not _is_label_key(key):
        raise PointerError(
            "a label key must be a JSON Pointer ('/a/0/b') or a shape path ('/a/*/b')"
        )


@functools.lru_cache(maxsize=4096)
def _is_label_key(key: str) -> bool:
    """Whether ``key`` is a pointer or a shape path; cached, because the vendor's schema keys
    come with every call (paths, no secret; the cache is bounded)."""
    return is_pointer(key) or is_shape_path(key)

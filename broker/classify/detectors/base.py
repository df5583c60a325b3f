"""The detector contract, the shared text features, and the rule that resolves overlaps.

A detector finds entities inside one string and reports them as ``Span(label, start, end)``:
offsets into the Python ``str`` (code points, end exclusive), never the matched text, so that a
span can travel into plans, logs and audit entries without carrying the value.

Speed comes from a few habits (measured in ``bench/README.md``):

- every pattern is compiled once at import, and starts with a character class, its look-behind
  placed after that class, so that ``re`` skips in C to the next possible first character
  instead of attempting a match at every position (``DualPattern`` adds an ``re.ASCII`` twin
  for ASCII-only text, where ``\\d`` is a range test rather than a Unicode table lookup);
- each detector states a cheap pre-filter over ``TextFeatures`` (computed once per string, in C:
  "contains @", digit count, ...) so most strings never reach most regexes, and a
  ``min_length`` so that ``DetectorSet`` skips strings too short for any entity;
- each detector makes at most one regex pass per string (e-mail: one attempt per ``@``), with
  check-digit validation, in C where it can be, only on the few candidates.

Every rewrite for speed is held to the detectors it replaced: ``tests/unit/classify/reference``
keeps a frozen copy, and ``test_equivalence`` requires identical spans on the metrics corpus and
on random entity-dense text.

**Overlaps.** Two detectors may claim overlapping text (an IBAN's digits may look like a card, a
phone may sit inside an ID). ``resolve_overlaps`` keeps a set of non-overlapping spans chosen
greedily by: longer span first; on equal length, the label that comes first in
``LABEL_PRIORITY`` (the more specific and more sensitive entity); then the earlier start; then the
label name. The same input always gives the same output, whatever the detector order.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from operator import attrgetter
from typing import Final, NamedTuple, Protocol

_DIGITS: Final = b"0123456789"

#: Tie-break order for overlapping spans of equal length, most specific first.
LABEL_PRIORITY: Final[tuple[str, ...]] = (
    "secret.private_key",
    "secret.jwt",
    "secret.cloud_key",
    "secret.api_token",
    "pii.national_id.cn",
    "pii.national_id.us_ssn",
    "pci.card",
    "finance.iban",
    "pii.email",
    "pii.phone",
    "net.ip",
)
_RANK: Final = {label: rank for rank, label in enumerate(LABEL_PRIORITY)}


@dataclass(frozen=True, slots=True)
class Span:
    """An entity found in a string: its label and its ``[start, end)`` code-point offsets."""

    label: str
    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start


class TextFeatures(NamedTuple):
    """Cheap facts about a string, computed once and shared by every detector's pre-filter.

    A named tuple rather than a frozen dataclass: it is built for every scanned string, and a
    frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field) cost several times
    more than the measuring itself on short strings.
    """

    length: int
    digits: int
    has_at: bool
    has_colon: bool
    has_dot: bool
    has_dash: bool

    @classmethod
    def of(cls, text: str) -> TextFeatures:
        """Measure ``text`` with C-speed methods only: no regex, no loop per character.

        ASCII digits are counted on the UTF-8 bytes, where deleting them is one C loop (ten
        ``str.count`` passes cost 7x more on 64 KB); a digit is one byte in UTF-8 and no other
        character contains that byte. ``surrogatepass`` because JSON may carry lone surrogates.
        """
        raw = text.encode("utf-8", "surrogatepass")
        return cls(
            len(text),
            len(raw) - len(raw.translate(None, _DIGITS)),
            "@" in text,
            ":" in text,
            "." in text,
            "-" in text,
        )


class DualPattern:
    """One regex compiled twice: as written, and with ``re.ASCII`` for text that is all ASCII.

    In ``re``'s default (Unicode) mode ``\\d`` is "any decimal digit of any script", a table
    lookup per character; under ``re.ASCII`` it is a plain range test, which makes the digit
    detectors' scans up to 1.7x faster. On ASCII-only text the two modes agree on ``\\d``,
    ``\\w`` and ``\\b`` (they differ on ``\\s``, which counts ``\\x1c``-``\\x1f`` as space only in
    Unicode mode, so a pattern using it is refused), and ``str.isascii`` is a flag read, so the
    choice costs nothing and changes nothing. Non-ASCII text keeps the Unicode pattern.
    """

    __slots__ = ("_ascii", "_unicode")

    def __init__(self, pattern: str) -> None:
        if "\\s" in pattern or "\\S" in pattern or "(?i" in pattern:
            raise ValueError("\\s, \\S and case folding differ between ASCII and Unicode mode")
        self._unicode = re.compile(pattern)
        self._ascii = re.compile(pattern, re.ASCII)

    @property
    def pattern(self) -> str:
        """The pattern text."""
        return self._unicode.pattern

    def finditer(self, text: str) -> Iterator[re.Match[str]]:
        """``re.finditer`` with the variant that suits ``text``."""
        return (self._ascii if text.isascii() else self._unicode).finditer(text)


class Detector(Protocol):
    """Finds one family of entities in a string.

    ``labels`` lists every label the detector can emit (for documentation and metrics).
    ``wants`` must be cheap and may give false positives but never false negatives: it only
    decides whether ``find`` is worth running.

    A detector may also have a ``min_length`` attribute (not part of the protocol, so a detector
    without one still fits): no span it reports is shorter, so ``DetectorSet`` skips strings
    shorter than the smallest ``min_length`` of its detectors without measuring them.
    """

    @property
    def labels(self) -> frozenset[str]:
        """Every label this detector may report."""
        ...

    def wants(self, features: TextFeatures) -> bool:
        """False when ``find`` cannot possibly report anything for a string with these features."""
        ...

    def find(self, text: str) -> Iterator[Span]:
        """Every candidate span in ``text``, validated; overlaps are resolved by the caller."""
        ...


_position: Final = attrgetter("start", "end")


def _precedence(span: Span) -> tuple[int, int, int, str]:
    """Sort key for ``resolve_overlaps``: longest, then by ``LABEL_PRIORITY``, start, label."""
    return (span.start - span.end, _RANK.get(span.label, len(_RANK)), span.start, span.label)


def resolve_overlaps(spans: Iterable[Span]) -> list[Span]:
    """Keep non-overlapping spans by the rule in the module docstring; return them by start.

    Usually nothing overlaps (one entity, one detector); then every span is kept and the answer
    is the spans by start, found with one sort and one pass, without hashing or ranking them.
    Distinct starts are required too, so duplicates and empty spans take the full rule.
    """
    by_start = sorted(spans, key=_position)
    if all(a.end <= b.start and a.start < b.start for a, b in pairwise(by_start)):
        return by_start
    ordered = sorted(set(by_start), key=_precedence)
    starts: list[int] = []
    ends: list[int] = []
    kept: list[Span] = []
    for span in ordered:
        i = bisect.bisect_left(starts, span.start)
        # Kept spans are disjoint and sorted, so only the neighbours around ``i`` can overlap.
        if i > 0 and ends[i - 1] > span.start:
            continue
        if i < len(starts) and starts[i] < span.end:
            continue
        starts.insert(i, span.start)
        ends.insert(i, span.end)
        kept.insert(i, span)
    return kept

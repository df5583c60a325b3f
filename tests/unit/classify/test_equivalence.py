"""The fast detectors find exactly what the frozen reference (``reference/``) finds.

Every speed-up in ``broker/classify/detectors`` (regexes restarted on their first character,
e-mail anchored on ``@``, cheaper features, early exits in ``DetectorSet.scan``) claims to change
nothing about the result. These tests hold it to that claim three ways:

- the whole set: ``scan`` gives the same spans as the reference set, on the metrics corpus and on
  random entity-dense text;
- each detector alone, *before* overlap resolution and *without* its pre-filter, so a rewritten
  regex cannot hide a difference behind a longer span of another detector;
- each pre-filter: whenever a detector finds something, its ``wants`` said yes (a pre-filter
  may only ever skip work, never findings).
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterable

import pytest

from broker.classify.detectors import (
    DetectorSet,
    Span,
    TextFeatures,
    all_detectors,
    default_detector_set,
    resolve_overlaps,
)
from broker.classify.detectors.base import DualPattern

from . import reference
from .corpus import POSITIVE_MAKERS, build_corpus
from .negatives import NEGATIVE_MAKERS

SpanTuple = tuple[str, int, int]

# Pieces that sit on the edges the detectors' boundary rules care about: separators, signs,
# look-alike prefixes, non-ASCII digits and letters, a lone surrogate, newlines, escaped ``\n``.
_PIECES = (
    *"0123456789", *" -./:+()@_%~X\n\t", "  ", "--", "::", "..", "00", "+44", "+1", "86", "(0)",
    "ey", "eyJ", "AKIA", "ASIA", "AIza", "ghp_", "github_pat_", "xoxb-", "sk_live_", "rk_live_",
    "-----BEGIN PRIVATE KEY-----", "-----END PRIVATE KEY-----", "\\n", "GB", "DE", "NL", "FR",
    "fe80", "abcd", "ABCD", "%eth0", "1.2", "255.", "٣", "१", "é", "中", "。", "\ud800", "a", "Z",
    "mail", "x@y.com", ".com", "@example.org", "a..b", "com", "AAAA", "0000", "666", "9",
)  # fmt: skip
# The shortest text each detector accepts: each one must still be found when it is the whole
# string (that is where a length pre-filter or the set's length skip would drop it).
_SHORTEST = [
    "-----BEGIN PRIVATE KEY-----",
    "eyJhbGciOiJub25lIn0.e30.",
    "xoxb-123456-12",
    "AKIAABCDEFGHIJKLMNOP",
    "11010519491231002X",
    "078-05-1121",
    "4222222222222",
    "NO9386011117947",
    "a@b.cd",
    "+20123456",
    "020 7946 0958",
    "::1",
    "1.2.3.4",
]
_ENTITIES = tuple(maker for _, maker in POSITIVE_MAKERS.values()) + NEGATIVE_MAKERS


def _random_text(rng: random.Random) -> str:
    """A short string dense with entities, near-entities and boundary characters."""
    parts: list[str] = []
    for _ in range(rng.randrange(1, 24)):
        roll = rng.random()
        if roll < 0.15:
            parts.append(rng.choice(_ENTITIES)(rng))
        elif roll < 0.25:
            parts.append("".join(rng.choice(string.digits) for _ in range(rng.randrange(1, 25))))
        elif roll < 0.3:
            alphabet = string.ascii_letters + string.digits + "_-"
            parts.append("".join(rng.choice(alphabet) for _ in range(rng.randrange(8, 80))))
        elif roll < 0.4:
            parts.append(_grouped_number(rng))
        else:
            parts.append(rng.choice(_PIECES))
    return "".join(parts)


def _grouped_number(rng: random.Random) -> str:
    """Digit groups with a prefix and separators, as phone, card, ID and SSN formats print them."""
    prefix = rng.choice(["", "", "+", "00", "(0", "(", "86", "861", "1-", "1 ", "0", "07", "X"])
    sep = rng.choice(["", " ", "-", ".", "/", ") ", ")"])
    groups = ["".join(rng.choice(string.digits) for _ in range(rng.randrange(1, 9)))]
    groups += [
        "".join(rng.choice(string.digits) for _ in range(rng.randrange(1, 6)))
        for _ in range(rng.randrange(0, 5))
    ]
    return prefix + (sep if rng.random() < 0.5 else "").join(groups[:1]) + sep.join(groups)


def _random_texts(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    return [_random_text(rng) for _ in range(count)]


def _tuples(spans: Iterable[object]) -> list[SpanTuple]:
    return sorted((s.label, s.start, s.end) for s in spans)  # type: ignore[attr-defined]


_FAST: DetectorSet = default_detector_set()
_SLOW = reference.default_detector_set()
_CORPUS_TEXTS = [item.text for item in build_corpus(seed=11, per_label=300, negatives=1500)]
_RANDOM_TEXTS = _random_texts(seed=3, count=4000)
_FAST_BY_NAME = {type(d).__name__: d for d in all_detectors()}
_SLOW_BY_NAME = {type(d).__name__: d for d in reference.all_detectors()}


def _mismatches(texts: Iterable[str]) -> list[tuple[str, list[SpanTuple], list[SpanTuple]]]:
    out = []
    for text in texts:
        fast, slow = _tuples(_FAST.scan(text)), _tuples(_SLOW.scan(text))
        if fast != slow:
            out.append((text, fast, slow))
    return out


def test_reference_covers_every_detector() -> None:
    assert set(_FAST_BY_NAME) == set(_SLOW_BY_NAME)


def test_scan_matches_reference_on_the_corpus() -> None:
    assert _mismatches(_CORPUS_TEXTS) == []


def test_scan_matches_reference_on_random_dense_text() -> None:
    assert _mismatches(_RANDOM_TEXTS) == []


def test_scan_matches_reference_on_long_mixed_text() -> None:
    """Long strings: many entities per string, so the regexes resume after matches."""
    rng = random.Random(5)
    texts = [" ".join(rng.sample(_RANDOM_TEXTS, 40)) for _ in range(50)]
    texts += ["".join(rng.sample(_CORPUS_TEXTS, 30)) for _ in range(50)]
    assert _mismatches(texts) == []


@pytest.mark.parametrize("name", sorted(_FAST_BY_NAME))
def test_each_detector_matches_reference_before_overlaps(name: str) -> None:
    fast, slow = _FAST_BY_NAME[name], _SLOW_BY_NAME[name]
    bad = []
    for text in _CORPUS_TEXTS + _RANDOM_TEXTS:
        got, want = _tuples(fast.find(text)), _tuples(slow.find(text))
        if got != want:
            bad.append((text, got, want))
    assert bad == []


@pytest.mark.parametrize("name", sorted(_FAST_BY_NAME))
def test_prefilter_never_skips_a_finding(name: str) -> None:
    detector = _FAST_BY_NAME[name]
    skipped = [
        text
        for text in _CORPUS_TEXTS + _RANDOM_TEXTS
        if not detector.wants(TextFeatures.of(text)) and any(True for _ in detector.find(text))
    ]
    assert skipped == []


@pytest.mark.parametrize("name", sorted(_FAST_BY_NAME))
def test_no_finding_is_shorter_than_min_length(name: str) -> None:
    """``DetectorSet`` skips strings shorter than every ``min_length``: that must lose nothing."""
    detector = _FAST_BY_NAME[name]
    shortest = detector.min_length  # type: ignore[attr-defined]
    short = [
        (text, span)
        for text in _CORPUS_TEXTS + _RANDOM_TEXTS + _SHORTEST
        for span in detector.find(text)
        if span.end - span.start < shortest
    ]
    assert short == []


def test_the_shortest_entities_are_found_alone() -> None:
    missed = [text for text in _SHORTEST if not _FAST.scan(text)]
    assert missed == []
    assert [_tuples(_FAST.scan(t)) for t in _SHORTEST] == [
        _tuples(_SLOW.scan(t)) for t in _SHORTEST
    ]


def test_resolve_overlaps_matches_reference_on_random_spans() -> None:
    """The no-overlap shortcut in ``resolve_overlaps`` against the reference's full rule."""
    rng = random.Random(9)
    labels = [*reference.LABEL_PRIORITY, "x.custom"]
    for _ in range(20_000):
        raw = []
        for _ in range(rng.randrange(0, 7)):
            start = rng.randrange(0, 40)
            raw.append((rng.choice(labels), start, start + rng.randrange(0, 12)))
        if raw and rng.random() < 0.2:
            raw.append(rng.choice(raw))  # an exact duplicate
        fast = resolve_overlaps(Span(*s) for s in raw)
        slow = reference.resolve_overlaps(reference.Span(*s) for s in raw)
        assert [(s.label, s.start, s.end) for s in fast] == [
            (s.label, s.start, s.end) for s in slow
        ], raw


def test_dual_pattern_refuses_what_ascii_mode_reads_differently() -> None:
    for pattern in (r"a\sb", r"\S+", r"(?i)abc"):
        with pytest.raises(ValueError, match="differ"):
            DualPattern(pattern)


def test_dual_pattern_uses_unicode_digits_for_non_ascii_text() -> None:
    digits = DualPattern(r"\d+")
    assert [m.group() for m in digits.finditer("a 12 b")] == ["12"]
    assert [m.group() for m in digits.finditer("é ١٢ 34")] == ["١٢", "34"]

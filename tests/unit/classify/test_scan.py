"""DetectorSet: overlap resolution, the scan cap, and huge strings."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from broker.classify.detectors import (
    DEFAULT_MAX_SCAN_CHARS,
    TRUNCATED,
    DetectorSet,
    Span,
    TextFeatures,
    all_detectors,
    default_detector_set,
    resolve_overlaps,
)


class FixedDetector:
    """Reports the spans it was given, to test the set's own rules."""

    def __init__(self, *spans: Span) -> None:
        self.spans = spans
        self.labels: Final = frozenset(s.label for s in spans)

    def wants(self, features: TextFeatures) -> bool:
        return True

    def find(self, text: str) -> Iterator[Span]:
        yield from self.spans


def test_longest_span_wins_then_label_priority_then_start() -> None:
    spans = [
        Span("pii.phone", 0, 10),
        Span("pci.card", 0, 16),
        Span("net.ip", 14, 20),
        Span("pii.email", 20, 30),
        Span("pii.phone", 20, 30),
        Span("x.unknown", 40, 45),
    ]
    assert resolve_overlaps(spans) == [
        Span("pci.card", 0, 16),
        Span("pii.email", 20, 30),
        Span("x.unknown", 40, 45),
    ]
    assert resolve_overlaps(reversed(spans)) == resolve_overlaps(spans)


def test_adjacent_spans_do_not_overlap() -> None:
    spans = [Span("a", 0, 5), Span("b", 5, 9)]
    assert resolve_overlaps(spans) == spans


def test_set_resolves_across_detectors_deterministically() -> None:
    one = FixedDetector(Span("pii.phone", 2, 8))
    two = FixedDetector(Span("pii.national_id.cn", 0, 18))
    text = "x" * 20
    assert DetectorSet([one, two]).scan(text) == DetectorSet([two, one]).scan(text)
    assert DetectorSet([one, two]).scan(text) == [Span("pii.national_id.cn", 0, 18)]


def test_text_beyond_the_cap_is_reported_as_truncated_not_scanned() -> None:
    detectors = DetectorSet(all_detectors(), max_scan_chars=100)
    text = "a" * 90 + " x@example.com " + "4111111111111111" + "b" * 50
    spans = detectors.scan(text)
    assert spans == [Span(TRUNCATED, 100, len(text))]
    assert TRUNCATED in detectors.labels


def test_a_string_at_the_cap_is_not_truncated() -> None:
    detectors = DetectorSet(all_detectors(), max_scan_chars=30)
    assert detectors.scan("x@example.com".rjust(30)) == [Span("pii.email", 17, 30)]


def test_one_megabyte_is_scanned_in_full() -> None:
    filler = "Lorem ipsum dolor sit amet 2023-11-08 v1.2.3 order #100234567. 中文内容。 "
    text = filler * (1_000_000 // len(filler))
    text = text[:500_000] + " card 4111 1111 1111 1111 " + text[500_000:]
    assert len(text) <= DEFAULT_MAX_SCAN_CHARS
    spans = default_detector_set().scan(text)
    assert [s.label for s in spans] == ["pci.card"]
    assert text[spans[0].start : spans[0].end] == "4111 1111 1111 1111"


def test_empty_string_and_zero_cap() -> None:
    assert default_detector_set().scan("") == []
    assert DetectorSet(all_detectors(), max_scan_chars=0).scan("abc") == [Span(TRUNCATED, 0, 3)]

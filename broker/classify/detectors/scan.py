"""``DetectorSet``: run a group of detectors over one string, with a length cap.

The cap exists because a caller chooses how long its strings are, and scanning is the one part of
classification whose cost grows with the payload's bytes rather than its field count. Only the
first ``max_scan_chars`` code points of a string are scanned. When a string is longer, the result
ends with ``Span("scan.truncated", max_scan_chars, len(text))`` covering exactly the part nobody
looked at, so that a policy can treat "not scanned" as a label of its own (for example: redact or
deny it) instead of mistaking it for "clean". An entity that straddles the cap is reported only
if its scanned prefix is valid on its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from broker.classify.detectors.base import Detector, Span, TextFeatures, resolve_overlaps

TRUNCATED: Final = "scan.truncated"
#: One mebicharacter: enough for any realistic form field, a bounded cost for a hostile one.
DEFAULT_MAX_SCAN_CHARS: Final = 1 << 20


class DetectorSet:
    """A fixed group of detectors and a scan-length cap; cheap to share between threads.

    Detectors hold only compiled patterns and constants, so one set serves every call.
    """

    def __init__(
        self, detectors: Iterable[Detector], *, max_scan_chars: int = DEFAULT_MAX_SCAN_CHARS
    ) -> None:
        if max_scan_chars < 0:
            raise ValueError("max_scan_chars must be >= 0")
        self._detectors: tuple[Detector, ...] = tuple(detectors)
        self.max_scan_chars: Final = max_scan_chars
        # A string shorter than every detector's shortest finding is not measured at all
        # (``min_length`` is optional: a detector without one may find spans of any length).
        self._min_length = min((getattr(d, "min_length", 0) for d in self._detectors), default=0)
        # Bound methods looked up once, not twice per detector per string.
        self._steps = tuple((d.wants, d.find) for d in self._detectors)

    @property
    def labels(self) -> frozenset[str]:
        """Every label ``scan`` may return, ``scan.truncated`` included."""
        out = {TRUNCATED}
        for detector in self._detectors:
            out |= detector.labels
        return frozenset(out)

    def scan(self, text: str) -> list[Span]:
        """Non-overlapping spans in ``text`` ordered by start (see ``base.resolve_overlaps``)."""
        truncated = len(text) > self.max_scan_chars
        scanned = text[: self.max_scan_chars] if truncated else text
        spans: list[Span] = []
        if scanned and len(scanned) >= self._min_length:
            features = TextFeatures.of(scanned)
            for wants, find in self._steps:
                if wants(features):
                    spans.extend(find(scanned))
        kept = resolve_overlaps(spans) if len(spans) > 1 else spans
        if truncated:
            kept.append(Span(TRUNCATED, self.max_scan_chars, len(text)))
        return kept

"""Every entity detector, alone and as the default set, on arbitrary text.

The input's first byte picks a detector (or, for byte 255 and others past the detector count,
the whole default set with a small scan cap); the rest is the text, decoded with
``surrogatepass`` so lone surrogates (which JSON allows) reach the detectors too. Each
detector must return spans inside the text, with a label it declares; the set must return
non-overlapping spans in order, each from a detector's label vocabulary. A detector raises
nothing: an exception here is a finding whatever its type.
"""

from __future__ import annotations

from tests.fuzz.harnesses._support import instrumented, main

with instrumented():
    from broker.classify.detectors import (
        TRUNCATED,
        DetectorSet,
        TextFeatures,
        all_detectors,
        default_detector_set,
    )

#: Detectors document no error for any text.
EXPECTED: tuple[type[BaseException], ...] = ()

DETECTORS = all_detectors()
CAPPED = DetectorSet(DETECTORS, max_scan_chars=64)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass") if _valid(raw) else raw.decode("latin-1")


def _valid(raw: bytes) -> bool:
    try:
        raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return False
    return True


def fuzz_one(data: bytes) -> None:
    """Run one detector (or the set) over the text and check its spans."""
    if not data:
        return
    choice, text = data[0], _text(data[1:])
    if choice < len(DETECTORS):
        detector = DETECTORS[choice]
        if not detector.wants(TextFeatures.of(text)):
            # ``wants`` may refuse only text in which ``find`` reports nothing.
            assert not list(detector.find(text)), type(detector).__name__
            return
        for span in detector.find(text):
            assert span.label in detector.labels, span
            assert 0 <= span.start < span.end <= len(text), span
        return
    detectors = CAPPED if choice % 2 else default_detector_set()
    spans = detectors.scan(text)
    end = 0
    for span in spans:
        assert span.label in detectors.labels, span
        assert end <= span.start < span.end <= len(text), spans
        end = span.end
    if len(text) > detectors.max_scan_chars:
        assert spans[-1].label == TRUNCATED


if __name__ == "__main__":
    main(fuzz_one)

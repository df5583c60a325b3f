"""Scanner then restorer: the answer side of a stream, end to end on pure text."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from broker.classify.detectors import Span, default_detector_set
from broker.enforce import transforms
from broker.streaming import (
    MAX_TOKEN_HOLD,
    StreamingRestorer,
    StreamingScanner,
    TextPipeline,
    restore_text,
    run_stream,
    scan_text,
)

from .splits import random_splits

TOKEN = "TKN-0123456789ABCDEFGHJK"
DETECTORS = default_detector_set()


def resolve(tokens: Collection[str]) -> Mapping[str, str]:
    return {TOKEN: "4111 1111 1111 1111"} if TOKEN in tokens else {}


def redact(span: Span, _text: str) -> str:
    return transforms.redact_marker((span.label,))


def pipeline() -> TextPipeline:
    return TextPipeline([StreamingScanner(DETECTORS, redact), StreamingRestorer(resolve)])


def test_policy_first_then_restoration_for_any_split() -> None:
    """The buyer's own card comes back restored; a card the model made up is redacted."""
    text = f"Your card {TOKEN} is on file; the test card 5555 5555 5555 4444 is not yours. "
    expected = restore_text(scan_text(text, DETECTORS, redact), resolve)[0]
    assert "4111 1111 1111 1111" in expected and "5555" not in expected
    for chunks in random_splits(text, runs=100, seed=3, max_chunk=7):
        assert "".join(run_stream(pipeline(), chunks)) == expected


def test_holds_at_most_the_sum_of_the_stages() -> None:
    scanner = StreamingScanner(DETECTORS, redact)
    restorer = StreamingRestorer(resolve)
    pipe = TextPipeline([scanner, restorer])
    text = f"some {TOKEN} text and mail ada@example.org to me " * 3
    out = []
    for ch in text:
        out.append(pipe.feed(ch))
        assert scanner.held + restorer.held <= scanner.max_hold + MAX_TOKEN_HOLD
    out.append(pipe.finish())
    assert "".join(out) == restore_text(scan_text(text, DETECTORS, redact), resolve)[0]


def test_run_stream_skips_empty_releases() -> None:
    assert list(run_stream(pipeline(), ["He", "llo ", "TKN-01", "23"])) == ["Hello ", "TKN-0123"]

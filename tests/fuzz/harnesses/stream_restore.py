"""An answer's text, cut into arbitrary chunks, through each streaming stage on its own:
``StreamingRestorer`` (vault tokens), ``CiphertextRestorer`` (issued ciphertexts) and
``StreamingScanner`` (entity actions).

The input is cut as ``_support.split`` says, the body decoded as UTF-8 (with ``replace``:
the SSE layer refuses invalid UTF-8 before text gets here). Each stage must give, joined, what
its non-streamed function gives for the whole text (for the scanner: when the text is no longer
than its ``max_entity_chars``, the bound of its guarantee), and never hold more than its
documented bound. None of them raises for any text.
"""

from __future__ import annotations

from tests.fuzz.harnesses._streams import CIPHERTEXTS, open_ciphertext, resolve_tokens
from tests.fuzz.harnesses._support import chunks, instrumented, main, split

with instrumented():
    from broker.classify.detectors import Span, default_detector_set
    from broker.streaming import (
        CiphertextRestorer,
        StreamingRestorer,
        StreamingScanner,
        TextStage,
    )
    from broker.streaming.ciphertexts import open_ciphertexts
    from broker.streaming.restore import MAX_TOKEN_HOLD, restore_text
    from broker.streaming.scan import scan_text

#: The streaming stages document no error for any text.
EXPECTED: tuple[type[BaseException], ...] = ()

DETECTORS = default_detector_set()
MAX_ENTITY_CHARS = 64


def _redact(span: Span, text: str) -> str:
    return f"[{span.label}]"


def _through(stage: TextStage, pieces: list[str], hold: int) -> str:
    out = []
    for piece in pieces:
        out.append(stage.feed(piece))
        held = stage.held  # type: ignore[attr-defined]
        assert held <= hold, f"{type(stage).__name__} holds {held} > {hold}"
    out.append(stage.finish())
    return "".join(out)


def fuzz_one(data: bytes) -> None:
    """Stream the text through each stage and compare with the whole-text result."""
    body, sizes = split(data)
    text = body.decode("utf-8", "replace")
    pieces = chunks(text, sizes)

    restorer = StreamingRestorer(resolve_tokens)
    got = _through(restorer, pieces, MAX_TOKEN_HOLD)
    assert (got, restorer.restored) == restore_text(text, resolve_tokens)

    ciphers = CiphertextRestorer(tuple(CIPHERTEXTS), open_ciphertext)
    got = _through(ciphers, pieces, ciphers.max_hold)
    assert (got, ciphers.restored) == open_ciphertexts(text, tuple(CIPHERTEXTS), open_ciphertext)

    scanner = StreamingScanner(DETECTORS, _redact, max_entity_chars=MAX_ENTITY_CHARS)
    got = _through(scanner, pieces, scanner.max_hold)
    if len(text) <= MAX_ENTITY_CHARS:
        assert got == scan_text(text, DETECTORS, _redact)


if __name__ == "__main__":
    main(fuzz_one)

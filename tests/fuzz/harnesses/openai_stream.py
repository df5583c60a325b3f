"""A vendor's OpenAI-compatible event stream, cut into arbitrary network reads, through
``ChatStream`` (SSE parsing, JSON, chunk facts) and ``ChunkRewriter`` (allow-list, scanning,
token and ciphertext restoring), as ``InvokeStream`` runs them.

The input is cut as ``_support.split`` says. The same stream in one read must give the same
chunks, the same outcome and the same buyer chunks: how the network cuts bytes must never
change what the buyer receives.
"""

from __future__ import annotations

from typing import Any

import httpx

from tests.fuzz.harnesses._streams import CIPHERTEXTS, CallVault, open_ciphertext
from tests.fuzz.harnesses._support import chunks, instrumented, main, split

with instrumented():
    from broker.calls.stream_chunks import ChunkRewriter
    from broker.classify.detectors import Span, default_detector_set
    from broker.runtimes.openai import StreamInterrupted, StreamMalformed
    from broker.runtimes.openai.stream import ChatStream
    from broker.runtimes.openai.transport import CallGuard, DeadlineWatcher, Watch

#: What ``ChatStream`` documents for a stream that ends early or is malformed.
EXPECTED = (StreamInterrupted, StreamMalformed)

MAX_BYTES = 64 * 1024
DETECTORS = default_detector_set()
WATCHER = DeadlineWatcher()  # never armed here: nothing starts its thread


def _redact(span: Span, text: str) -> str:
    return f"[{span.label}]"


def _run(reads: list[bytes]) -> tuple[list[Any], str]:
    guard = CallGuard()
    stream = ChatStream(
        ref="v/m@1",
        call_id="c",
        response=httpx.Response(200, content=iter(reads)),
        guard=guard,
        timer=Watch(WATCHER, guard),
        max_bytes=MAX_BYTES,
        started=0.0,
    )
    rewriter = ChunkRewriter(
        DETECTORS,
        _redact,
        CallVault(),  # type: ignore[arg-type]
        "t",
        "c",
        ciphertexts=tuple(CIPHERTEXTS),
        opener=open_ciphertext,
    )
    seen: list[Any] = []
    outcome = "completed"
    try:
        for chunk in stream:
            seen.append((chunk.seq, chunk.text, chunk.finish_reason, chunk.usage))
            seen.append(rewriter.rewrite(chunk.data))
    except EXPECTED as exc:
        outcome = f"{type(exc).__name__}:{exc.delivered_chunks}"
    seen.append(rewriter.flush())
    seen.append((stream.completed, stream.finish_reason, stream.usage, stream.delivered_chunks))
    return seen, outcome


def fuzz_one(data: bytes) -> None:
    """Run the stream as cut, and whole; both must agree."""
    body, sizes = split(data)
    cut = _run(chunks(body, sizes))
    if sizes:
        assert cut == _run([body]), "the cut stream and the whole stream differ"


if __name__ == "__main__":
    main(fuzz_one)

"""The buyer's chunks, however the vendor cuts its answer, carry the non-streamed result.

``ChunkRewriter`` is what ``InvokeStream`` runs on every vendor chunk. These tests cut random
answers (entities, the buyer's tokens, punctuation; see
``tests/unit/streaming/test_no_leak_across_chunks.py``) into vendor chunks the way a model
server does (a role chunk first, then content pieces, then a finish reason) and check that the
content the buyer receives, joined, equals the whole answer enforced at once, and that no chunk
carries anything but allow-listed fields.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from typing import Any

import pytest

from broker.calls.stream_chunks import ChunkRewriter
from broker.classify.detectors import default_detector_set
from tests.unit.streaming.test_no_leak_across_chunks import (
    MINE,
    answers,
    expected,
    redact,
    word_splits,
)

DETECTORS = default_detector_set()


class _Vault:
    def resolve(self, tenant: str, scope: str, tokens: Collection[str]) -> dict[str, Any]:
        assert (tenant, scope) == ("t", "c")
        return {token: MINE[token] for token in tokens if token in MINE}


def vendor_chunks(pieces: list[str]) -> list[dict[str, Any]]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {"id": "x", "object": "chat.completion.chunk", "choices": [choice]}

    return [
        chunk({"role": "assistant", "content": ""}),
        *(chunk({"content": piece}) for piece in pieces),
        chunk({}, "stop"),
    ]


def buyer_text(rewriter: ChunkRewriter, chunks: list[dict[str, Any]]) -> str:
    out = [rewriter.rewrite(chunk) for chunk in chunks]
    out.append(rewriter.flush())
    text = []
    for sent in out:
        if sent is None:
            continue
        for choice in sent["choices"]:
            assert set(choice) <= {"index", "delta", "finish_reason"}
            text.append(choice["delta"].get("content", ""))
    return "".join(text)


@pytest.mark.parametrize("seed", [11, 12])
def test_buyer_content_equals_the_whole_answer_enforced_at_once(seed: int) -> None:
    rng = random.Random(seed)
    vault: Any = _Vault()
    for text, _ in answers(seed, 40):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 30))))
        random_pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        for pieces in (word_splits(text), list(text), random_pieces):
            rewriter = ChunkRewriter(DETECTORS, redact, vault, "t", "c")
            assert buyer_text(rewriter, vendor_chunks(pieces)) == expected(text), (text, pieces)

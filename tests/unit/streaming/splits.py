"""Ways to cut a text into chunks, shared by the streaming tests (deterministic, seeded)."""

from __future__ import annotations

import random
from collections.abc import Iterator

from broker.streaming import TextStage


def every_single_split(text: str) -> Iterator[list[str]]:
    """``[text[:i], text[i:]]`` for every ``i``, empty pieces included."""
    for i in range(len(text) + 1):
        yield [text[:i], text[i:]]


def random_splits(text: str, *, runs: int, seed: int, max_chunk: int = 9) -> Iterator[list[str]]:
    """``runs`` random cuts of ``text`` into chunks of 0..max_chunk characters."""
    rng = random.Random(seed)
    for _ in range(runs):
        chunks: list[str] = []
        i = 0
        while i < len(text):
            step = rng.randint(0, max_chunk)
            chunks.append(text[i : i + step])
            i += step
        yield chunks


def stream_through(stage: TextStage, chunks: list[str], *, hold_limit: int) -> str:
    """Feed ``chunks`` and finish; check that ``held`` never passes ``hold_limit``."""
    out = []
    for chunk in chunks:
        out.append(stage.feed(chunk))
        held = getattr(stage, "held", 0)
        assert held <= hold_limit, f"held {held} > {hold_limit}"
    out.append(stage.finish())
    return "".join(out)

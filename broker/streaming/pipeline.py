"""Chain text stages (scanner, then restorer) into one answer-side pipeline for a stream.

The answer path applies the policy first and restores the buyer's tokens last (as for
``Invoke``): the policy must never see restored values, and the buyer must get its own values
back. Each stage holds back only what it must, so the pipeline holds back at most the sum of
the stages' bounds (``StreamingScanner.max_hold`` + ``MAX_TOKEN_HOLD``, + the
``CiphertextRestorer.max_hold`` of a call that encrypted something).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol


class TextStage(Protocol):
    """A streaming transformation of text: ``feed`` chunks in order, then ``finish`` once."""

    def feed(self, chunk: str) -> str:
        """Take the next chunk; return the text that can be released now."""
        ...

    def finish(self) -> str:
        """Release everything still held."""
        ...


class TextPipeline:
    """Stages applied in order; itself a ``TextStage``."""

    def __init__(self, stages: Sequence[TextStage]) -> None:
        self._stages = tuple(stages)

    def feed(self, chunk: str) -> str:
        """Pass ``chunk`` through every stage; return what the last one releases."""
        for stage in self._stages:
            chunk = stage.feed(chunk)
        return chunk

    def finish(self) -> str:
        """Flush each stage in order, pushing what it releases through the stages after it."""
        out = ""
        for index, stage in enumerate(self._stages):
            text = stage.finish()
            for later in self._stages[index + 1 :]:
                text = later.feed(text)
            out += text
        return out


def run_stream(stage: TextStage, chunks: Iterable[str]) -> Iterator[str]:
    """Yield the non-empty releases of ``stage`` over ``chunks``, then its final flush."""
    for chunk in chunks:
        released = stage.feed(chunk)
        if released:
            yield released
    rest = stage.finish()
    if rest:
        yield rest

"""What the OpenAI-compatible runtime hands back besides the answer: chunks, usage, stream errors.

Usage (prompt and completion tokens) is what a vendor bills, so the audit entry records it. It
travels beside the answer rather than inside the broker's own structures:

- for ``invoke`` the chat completion JSON carries it as ``usage``; ``usage_from_answer`` reads it
  (call it on the answer *before* the answer-side policy, which may drop the field);
- for ``stream`` the ``ChatStream`` object records it from the final chunk (the runtime asks for
  it with ``stream_options.include_usage``), readable once the iteration has ended, together
  with how many chunks were delivered and whether the stream completed.

A stream that fails after some chunks were yielded raises an error that says how much was
delivered (``delivered_chunks``), so the audit entry can record a partial answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.errors import BackendError, Unavailable


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts a vendor reported for one call (``total`` is theirs, or the sum)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    def as_audit(self) -> dict[str, int]:
        """The value-free form an audit entry stores."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


def usage_from_answer(answer: Mapping[str, Any]) -> Usage | None:
    """The ``usage`` object of a chat completion or chunk, or None when absent or malformed.

    Vendors that omit usage are common (and some send nulls); that is not an error, the audit
    entry then simply has no token counts.
    """
    raw = answer.get("usage")
    if not isinstance(raw, Mapping):
        return None
    prompt = _count(raw.get("prompt_tokens"))
    completion = _count(raw.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    total = _count(raw.get("total_tokens"))
    return Usage(prompt, completion, prompt + completion if total is None else total)


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


@dataclass(frozen=True, slots=True)
class ChatChunk:
    """One ``chat.completion.chunk`` as the vendor sent it, with its position in the stream.

    ``data`` is the vendor's JSON object unchanged (choices with deltas, tool-call fragments,
    finish reasons); the properties read the parts the broker needs for choice 0.
    """

    data: Mapping[str, Any]
    seq: int

    @property
    def text(self) -> str:
        """The content delta of choice 0 ("" when the chunk carries none)."""
        delta = self._delta()
        content = delta.get("content") if delta is not None else None
        return content if isinstance(content, str) else ""

    @property
    def tool_calls(self) -> list[Mapping[str, Any]]:
        """Tool-call fragments of choice 0 (``arguments`` arrive as partial JSON text)."""
        delta = self._delta()
        calls = delta.get("tool_calls") if delta is not None else None
        if not isinstance(calls, list):
            return []
        return [call for call in calls if isinstance(call, Mapping)]

    @property
    def finish_reason(self) -> str | None:
        """Why choice 0 stopped (``stop``, ``length``, ``tool_calls``...), once it has."""
        choice = self._choice()
        reason = choice.get("finish_reason") if choice is not None else None
        return reason if isinstance(reason, str) else None

    @property
    def usage(self) -> Usage | None:
        """Token counts, present on the final chunk when the vendor reports them."""
        return usage_from_answer(self.data)

    def _choice(self) -> Mapping[str, Any] | None:
        choices = self.data.get("choices")
        if not isinstance(choices, list):
            return None
        for choice in choices:
            if isinstance(choice, Mapping) and choice.get("index", 0) == 0:
                return choice
        return None

    def _delta(self) -> Mapping[str, Any] | None:
        choice = self._choice()
        delta = choice.get("delta") if choice is not None else None
        return delta if isinstance(delta, Mapping) else None


class StreamInterrupted(Unavailable):
    """The vendor's stream stopped before its end; ``delivered_chunks`` were already yielded.

    UNAVAILABLE: nothing is wrong with the request, the connection was lost. Retrying repeats
    the whole generation, which is the buyer's decision (the broker never retries).
    """

    def __init__(self, message: str, *, delivered_chunks: int) -> None:
        super().__init__(message, details={"delivered_chunks": str(delivered_chunks)})
        self.delivered_chunks = delivered_chunks


class StreamMalformed(BackendError):
    """The vendor's stream broke the event-stream or chunk format after ``delivered_chunks``."""

    def __init__(self, message: str, *, delivered_chunks: int) -> None:
        super().__init__(message, details={"delivered_chunks": str(delivered_chunks)})
        self.delivered_chunks = delivered_chunks

"""A sandboxed chat model's answer, delivered through ``Broker/InvokeStream``.

Sandbox workers answer a request with one JSON frame, so a sandboxed chat model cannot emit
tokens as it generates them. To let buyers use one RPC for every chat model, ``InvokeStream``
on a sandbox model runs the call and delivers the whole answer as a single chat chunk (the
answer-side policy and token restoration apply exactly as for any stream). Time to first chunk
is therefore the model's whole generation time; say so to buyers who need live tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any

from broker.runtimes.openai import ChatChunk, Usage, usage_from_answer


class AnswerAsStream:
    """One chat completion presented as a stream of exactly one ``chat.completion.chunk``."""

    def __init__(self, answer: Mapping[str, Any]) -> None:
        choices = answer.get("choices")
        first = choices[0] if isinstance(choices, list) and choices else {}
        message = first.get("message") if isinstance(first, Mapping) else None
        message = message if isinstance(message, Mapping) else {}
        delta: dict[str, Any] = {"role": "assistant"}
        if isinstance(message.get("content"), str):
            delta["content"] = message["content"]
        if isinstance(message.get("tool_calls"), list):
            delta["tool_calls"] = message["tool_calls"]
        finish = first.get("finish_reason") if isinstance(first, Mapping) else None
        self.finish_reason: str | None = finish if isinstance(finish, str) else None
        self.usage: Usage | None = usage_from_answer(answer)
        self.delivered_chunks = 0
        self.completed = False
        chunk = {
            "id": answer.get("id", ""),
            "object": "chat.completion.chunk",
            "model": answer.get("model", ""),
            "choices": [{"index": 0, "delta": delta, "finish_reason": self.finish_reason}],
        }
        self._pending: list[ChatChunk] = [ChatChunk(chunk, 0)]

    def __iter__(self) -> AnswerAsStream:
        return self

    def __next__(self) -> ChatChunk:
        if not self._pending:
            self.completed = True
            raise StopIteration
        self.delivered_chunks += 1
        return self._pending.pop()

    def close(self) -> None:
        """Nothing to abandon: the answer is already complete."""
        self._pending.clear()

    def __enter__(self) -> AnswerAsStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

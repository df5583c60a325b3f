"""A sandboxed chat model's answer, delivered through ``Broker/InvokeStream``.

``SandboxRuntime.stream`` asks the package for a stream the way OpenAI's API does: the payload
it sends carries ``"stream": true`` (``stream_options`` are the broker's business and removed).
The package decides:

- it returns a generator of ``chat.completion.chunk`` objects: each goes to the buyer as the
  model produces it (:class:`SandboxChatStream`, over ``WorkerStream``), so time to first chunk
  is the model's own plus a frame on a local socket;
- it returns one chat completion (a package that does not stream): the whole answer becomes a
  single chunk (:class:`AnswerAsStream`), and time to first chunk is the whole generation time.

Either way the answer-side policy and token restoration apply exactly as for any stream
(``broker.calls.stream``), and the facts the audit needs are kept: ``delivered_chunks``,
``completed``, ``finish_reason``, ``usage`` (from the chunk that carries it, usually the last).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from broker.closing import ClosedOnExit
from broker.runtimes.openai import ChatChunk, Usage, usage_from_answer
from broker.runtimes.sandbox.worker_stream import WorkerStream


class SandboxChatStream(ClosedOnExit):
    """A package's streamed chunks, forwarded one by one as the worker sends them.

    ``context`` holds the pool's hold on the worker (``WorkerPools.streaming``): it is left
    when the answer ends, and an error met while reading leaves it with that error, so the
    pool retires the worker and maps the error (deadline, limits, cancellation) as for a call.
    Closing the stream before the end kills the worker: it is mid-generation (see
    ``broker.runtimes.sandbox.worker_stream``). Iterate and close it in one thread.
    """

    def __init__(self, chunks: WorkerStream, context: contextlib.ExitStack) -> None:
        self._chunks = chunks
        self._context: contextlib.ExitStack | None = context
        self.delivered_chunks = 0
        """How many chunks have been handed to the consumer so far."""
        self.completed = False
        """True once the package ended its answer properly."""
        self.finish_reason: str | None = None
        """The finish reason of choice 0, once the package sent it."""
        self.usage: Usage | None = None
        """Token counts, when a chunk (usually the last) carries them."""

    def __iter__(self) -> SandboxChatStream:
        return self

    def __next__(self) -> ChatChunk:
        if self._context is None:
            raise StopIteration
        try:
            data = next(self._chunks)
        except StopIteration:
            self.completed = self._chunks.completed
            self.close()
            raise
        except BaseException as exc:
            context, self._context = self._context, None
            context.__exit__(type(exc), exc, exc.__traceback__)  # the pool's error, if it maps
            raise
        chunk = ChatChunk(data, self.delivered_chunks)
        self.usage = chunk.usage or self.usage
        self.finish_reason = chunk.finish_reason or self.finish_reason
        self.delivered_chunks += 1
        return chunk

    def close(self) -> None:
        """Give the worker back; before the end of the answer that kills it (see above)."""
        context, self._context = self._context, None
        if context is not None:
            context.close()


class AnswerAsStream(ClosedOnExit):
    """One chat completion presented as a stream of exactly one ``chat.completion.chunk``.

    For packages that answer a stream request with a whole completion: the buyer still uses
    one RPC for every chat model, and gets the text when the generation is over.
    """

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

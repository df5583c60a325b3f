"""``ChatStream``: a vendor's streamed chat completion, chunk by chunk, with its fate recorded.

The stream is an iterator the gRPC servicer can forward as it goes: nothing is buffered beyond
one event-stream line. Failures surface *after* the chunks already yielded, as the errors below,
and the stream object keeps the facts the audit entry needs whatever happened:
``delivered_chunks``, ``completed``, ``finish_reason``, ``usage``.

    end of stream                          outcome
    ``data: [DONE]``                       completed
    EOF after a chunk with finish_reason   completed (some servers omit [DONE])
    EOF otherwise, or connection dropped   StreamInterrupted (UNAVAILABLE), delivered_chunks set
    bad JSON, over-long or non-UTF-8 line, StreamMalformed (UNKNOWN), delivered_chunks set
      an ``error`` event or error object
    more than max_answer_bytes in total    StreamMalformed
    caller cancelled / deadline passed     Cancelled / DeadlineExceeded

The total byte cap bounds how long a misbehaving vendor can keep a call busy, not memory (which
the line cap already bounds): 16 MiB is orders of magnitude more than any chat answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson

from broker.closing import ClosedOnExit
from broker.errors import BrokerError
from broker.logging import get_logger
from broker.runtimes.openai.errors import error_for_abort, error_for_transport
from broker.runtimes.openai.sse import SSEError, iter_events
from broker.runtimes.openai.transport import CallGuard, Watch, guarded
from broker.runtimes.openai.types import (
    ChatChunk,
    StreamInterrupted,
    StreamMalformed,
    Usage,
    usage_from_answer,
)

_log = get_logger(__name__)


class _TooLarge(Exception):
    """Raised inside the byte pipeline when the total cap is passed."""


class ChatStream(Iterator[ChatChunk], ClosedOnExit):
    """Chunks of one streamed chat completion; close it (or exhaust it) to free the connection.

    Iterate it in the thread that consumes the chunks; ``close`` may be called from any thread
    and abandons the vendor request at once (it is what the ``on_cancel`` canceller does).
    """

    def __init__(
        self,
        *,
        ref: str,
        call_id: str,
        response: httpx.Response,
        guard: CallGuard,
        timer: Watch,
        max_bytes: int,
        started: float,
    ) -> None:
        self._ref = ref
        self._call_id = call_id
        self._response = response
        self._guard = guard
        self._timer = timer
        self._max_bytes = max_bytes
        self._started = started
        self._closed = False
        self._gen = self._chunks()
        self.delivered_chunks = 0
        """How many chunks have been handed to the consumer so far."""
        self.completed = False
        """True once the vendor ended the stream properly."""
        self.finish_reason: str | None = None
        """The finish reason of choice 0, once the vendor sent it."""
        self.usage: Usage | None = None
        """Token counts from the final chunk, when the vendor reported them."""

    def __iter__(self) -> ChatStream:
        return self

    def __next__(self) -> ChatChunk:
        if self._closed:
            raise StopIteration
        try:
            with guarded(self._guard):
                chunk = next(self._gen)
        except StopIteration:
            self.close()
            raise
        except BaseException:
            self.close()
            raise
        self.delivered_chunks += 1
        return chunk

    def close(self) -> None:
        """Stop the deadline timer and release (or, mid-answer, drop) the vendor connection."""
        if self._closed:
            return
        self._closed = True
        self._timer.cancel()
        self._guard.finish()
        self._response.close()
        _log.debug(
            "openai_stream_closed",
            call_id=self._call_id,
            model=self._ref,
            chunks=self.delivered_chunks,
            completed=self.completed,
            latency_ms=round((time.monotonic() - self._started) * 1000, 3),
        )

    def _bytes(self) -> Iterator[bytes]:
        total = 0
        for block in self._response.iter_bytes():
            total += len(block)
            if total > self._max_bytes:
                raise _TooLarge
            yield block

    def _chunks(self) -> Iterator[ChatChunk]:
        try:
            yield from self._parse()
        except SSEError as exc:
            raise self._malformed("sent a malformed event stream") from exc
        except _TooLarge as exc:
            raise self._malformed(f"streamed more than {self._max_bytes} bytes") from exc
        except httpx.HTTPError as exc:
            raise self._failure(exc) from exc

    def _parse(self) -> Iterator[ChatChunk]:
        for event in iter_events(self._bytes(), max_line_bytes=self._max_bytes):
            if event.data.strip() == "[DONE]":
                self.completed = True
                return
            if event.event == "error":
                raise self._malformed("reported an error in the middle of its stream")
            data = _object(event.data)
            if data is None:
                raise self._malformed("sent a stream event that is not a JSON object")
            if "error" in data and not data.get("choices"):
                raise self._malformed("reported an error in the middle of its stream")
            # __next__ counts a chunk as delivered once it has returned it: this is its index.
            chunk = ChatChunk(data=data, seq=self.delivered_chunks)
            self.usage = usage_from_answer(data) or self.usage
            self.finish_reason = chunk.finish_reason or self.finish_reason
            yield chunk
        if self._guard.reason is not None:
            raise error_for_abort(self._ref, self._guard.reason)
        if self.finish_reason is not None:
            self.completed = True
            return
        raise StreamInterrupted(
            f"model backend {self._ref} ended its stream before the answer was complete",
            delivered_chunks=self.delivered_chunks,
        )

    def _malformed(self, what: str) -> StreamMalformed:
        _log.warning("openai_stream_malformed", call_id=self._call_id, model=self._ref, what=what)
        return StreamMalformed(
            f"model backend {self._ref} {what}", delivered_chunks=self.delivered_chunks
        )

    def _failure(self, exc: httpx.HTTPError) -> BrokerError:
        if self._guard.reason is not None:
            return error_for_abort(self._ref, self._guard.reason)
        error = error_for_transport(self._ref, exc, connect_limited_by_deadline=False)
        _log.warning(
            "openai_stream_failed",
            call_id=self._call_id,
            model=self._ref,
            error=type(exc).__name__,
            chunks=self.delivered_chunks,
        )
        if isinstance(exc, httpx.TimeoutException):
            return error
        return StreamInterrupted(
            f"model backend {self._ref} dropped the stream after {self.delivered_chunks} chunks",
            delivered_chunks=self.delivered_chunks,
        )


def _object(text: str) -> dict[str, Any] | None:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None

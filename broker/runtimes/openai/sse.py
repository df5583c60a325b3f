"""Server-sent events, parsed incrementally from raw bytes with bounded memory.

The parser follows the WHATWG HTML "event stream" rules, because OpenAI-compatible servers
differ in the details the rules allow: lines end with LF, CRLF or a lone CR (and a CRLF may be
split across two network reads); ``data:`` lines of one event are joined with LF; a line starting
with ``:`` is a comment (servers send them as keep-alives); one space after the colon is
dropped; unknown fields are ignored; an event is dispatched by a blank line, and a partial event
at the end of the stream is discarded.

Two rules are ours, because a vendor's stream is untrusted input:

- **Bounded lines.** A line longer than ``max_line_bytes`` raises ``SSEError`` instead of being
  buffered: a server that sends 50 MB without a newline must not make the broker hold 50 MB.
- **Strict text.** A line that is not UTF-8 raises ``SSEError``: garbage is a fault to report,
  not text to guess at.

Nothing here knows about chat completions; ``broker.runtimes.openai.stream`` gives the events
their meaning.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final


class SSEError(ValueError):
    """The byte stream is not a well-formed event stream (the message holds no stream data)."""


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event: its type (``message`` unless named), data, and last event id."""

    data: str
    event: str = "message"
    id: str = ""


_EOL: Final = re.compile(rb"\r\n?|\n")


def iter_lines(chunks: Iterable[bytes], *, max_line_bytes: int) -> Iterator[str]:
    """Split raw bytes into decoded lines, whichever of LF, CRLF or CR ends them.

    A final line without a terminator is yielded too, so the caller can tell that the stream
    stopped in the middle of an event.
    """
    pending = bytearray()
    skip_lf = False  # the previous chunk ended with CR: a LF at the start of this one is its pair
    for chunk in chunks:
        if not chunk:
            continue
        start = 1 if skip_lf and chunk.startswith(b"\n") else 0
        for eol in _EOL.finditer(chunk, start):
            pending += chunk[start : eol.start()]
            _check_length(pending, max_line_bytes)
            yield _decode(pending)
            pending.clear()
            start = eol.end()
        skip_lf = start == len(chunk) and chunk.endswith(b"\r")
        pending += chunk[start:]
        _check_length(pending, max_line_bytes)
    if pending:
        yield _decode(pending)


def _check_length(line: bytearray, limit: int) -> None:
    if len(line) > limit:
        raise SSEError(f"event stream line longer than {limit} bytes")


def _decode(line: bytearray) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SSEError("event stream line is not valid UTF-8") from exc


class SSEDecoder:
    """Turns lines into events; one instance per stream (it holds the event being built)."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._event = ""
        self._last_id = ""
        self._has_data = False

    def feed(self, line: str) -> ServerSentEvent | None:
        """Take one line (without its terminator); return an event when a blank line ends one."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # comment, typically a keep-alive
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "event":
            self._event = value
        elif name == "id" and "\x00" not in value:
            self._last_id = value
        # "retry" and unknown field names are ignored, as the standard says.
        return None

    @property
    def pending(self) -> bool:
        """True while an event has started but has not been ended by a blank line."""
        return self._has_data

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._has_data:
            self._event = ""
            return None
        event = ServerSentEvent(
            data="\n".join(self._data), event=self._event or "message", id=self._last_id
        )
        self._data.clear()
        self._event = ""
        self._has_data = False
        return event


def iter_events(chunks: Iterable[bytes], *, max_line_bytes: int) -> Iterator[ServerSentEvent]:
    """Every complete event in a byte stream; a trailing partial event is dropped (by the rules).

    Raises ``SSEError`` for an over-long or non-UTF-8 line, after the events before it.
    """
    decoder = SSEDecoder()
    for line in iter_lines(chunks, max_line_bytes=max_line_bytes):
        event = decoder.feed(line)
        if event is not None:
            yield event

"""The event-stream parser on its own: line endings, multi-line data, comments, limits."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from broker.runtimes.openai import ServerSentEvent, SSEError, iter_events
from broker.runtimes.openai.sse import iter_lines

STREAM = (
    b": keep-alive comment\n"
    b'data: {"a":\n'
    b"data: 1}\n"
    b"\n"
    b"event: note\r\n"
    b"id: 7\r\n"
    b"retry: 100\r\n"
    b"unknown-field: x\r\n"
    b"data:no-space\r\n"
    b"\r\n"
    b"data:  two spaces\r"
    b"\r"
    b"data\n"
    b"\n"
    b"data: [DONE]\n\n"
    b"data: partial event without blank line\n"
)
EXPECTED = [
    ServerSentEvent(data='{"a":\n1}'),
    ServerSentEvent(data="no-space", event="note", id="7"),
    ServerSentEvent(data=" two spaces", id="7"),
    ServerSentEvent(data="", id="7"),
    ServerSentEvent(data="[DONE]", id="7"),
]


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def test_events_per_the_standard() -> None:
    """The partial event at the end is dropped, as the standard says."""
    assert list(iter_events([STREAM], max_line_bytes=1024)) == EXPECTED


def test_any_split_of_the_bytes_gives_the_same_events() -> None:
    """A CRLF split over two reads, a UTF-8 character split over two reads: same result."""
    data = STREAM + "data: é ✓\n\n".encode()
    whole = [*EXPECTED, ServerSentEvent(data="partial event without blank line\né ✓", id="7")]
    assert list(iter_events([data], max_line_bytes=1024)) == whole
    for i in range(len(data) + 1):
        assert list(iter_events(split_at(data, [i]), max_line_bytes=1024)) == whole
    for i in range(0, len(data), 3):
        assert list(iter_events(split_at(data, [i, i + 1, i + 2]), max_line_bytes=1024)) == whole


def test_lines_keep_a_trailing_unterminated_line() -> None:
    assert list(iter_lines([b"a\r\nb\rc\nd"], max_line_bytes=10)) == ["a", "b", "c", "d"]
    assert list(iter_lines([b"a\r", b"\nb"], max_line_bytes=10)) == ["a", "b"]
    assert list(iter_lines([b"a\r", b"", b"\nb"], max_line_bytes=10)) == ["a", "b"]


def test_an_over_long_line_is_refused_without_buffering_it() -> None:
    def endless() -> Iterator[bytes]:
        yield b"data: "
        while True:
            yield b"x" * 65536

    events = iter_events(endless(), max_line_bytes=1 << 20)
    with pytest.raises(SSEError, match="longer than"):
        next(events)


def test_events_before_a_bad_line_are_delivered_first() -> None:
    events = iter_events([b"data: one\n\ndata: \xff\xfe\n\n"], max_line_bytes=100)
    assert next(events) == ServerSentEvent(data="one")
    with pytest.raises(SSEError, match="UTF-8"):
        next(events)

"""OpenAIRuntime.stream: chunks as they come, and every way a vendor's stream can go wrong."""

from __future__ import annotations

import threading

import pytest

from broker.errors import BackendError, Cancelled, DeadlineExceeded, ResourceExhausted
from broker.runtimes.base import Canceller
from broker.runtimes.openai import (
    ChatChunk,
    OpenAIRuntime,
    StreamInterrupted,
    StreamMalformed,
    Usage,
)

from .test_openai_vendor import CHAT, VendorServer, runtime, vendor

__all__ = ["runtime", "vendor"]  # fixtures


def test_chunks_usage_and_request(vendor: VendorServer, runtime: OpenAIRuntime) -> None:
    stream = runtime.stream(vendor.model("stream"), CHAT, timeout=5, call_id="s1")
    chunks = list(stream)
    assert "".join(chunk.text for chunk in chunks) == "Hello!"
    assert [chunk.seq for chunk in chunks] == [0, 1, 2, 3]
    assert stream.completed and stream.finish_reason == "stop"
    assert stream.usage == Usage(5, 2, 7) and stream.delivered_chunks == 4
    headers, body = vendor.seen[0][1], vendor.seen[0][2]
    assert headers["accept"] == "text/event-stream"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_a_finish_reason_without_done_is_a_complete_stream(
    vendor: VendorServer, runtime: OpenAIRuntime
) -> None:
    with runtime.stream(vendor.model("nodone"), CHAT, timeout=5, call_id="s") as stream:
        assert "".join(c.text for c in stream) == "Hi!"
    assert stream.completed


def consume(stream_chunks: object) -> list[str]:
    """Collect texts until the stream raises; the texts got so far are on the exception."""
    got: list[str] = []
    try:
        for chunk in stream_chunks:  # type: ignore[attr-defined]
            assert isinstance(chunk, ChatChunk)
            got.append(chunk.text)
    except Exception as exc:
        exc.add_note(repr(got))
        exc.got = got  # type: ignore[attr-defined]
        raise
    return got


@pytest.mark.parametrize("scenario", ["drop", "cleaneof"])
def test_a_stream_dropped_midway_is_unavailable_after_the_chunks(
    vendor: VendorServer, runtime: OpenAIRuntime, scenario: str
) -> None:
    stream = runtime.stream(vendor.model(scenario), CHAT, timeout=5, call_id="s")
    with pytest.raises(StreamInterrupted) as caught:
        consume(stream)
    delivered = 3 if scenario == "drop" else 2
    assert caught.value.got == ["one ", "two ", "thr"][:delivered]  # type: ignore[attr-defined]
    assert caught.value.delivered_chunks == delivered == stream.delivered_chunks
    assert caught.value.details == {"delivered_chunks": str(delivered)}
    assert not stream.completed


@pytest.mark.parametrize(
    ("scenario", "delivered", "words"),
    [
        ("malformed", 2, "not a JSON object"),
        ("errorevent", 1, "reported an error"),
        ("hugeline", 1, "streamed more than"),
    ],
)
def test_malformed_streams_are_backend_errors_after_the_chunks(
    vendor: VendorServer, runtime: OpenAIRuntime, scenario: str, delivered: int, words: str
) -> None:
    stream = runtime.stream(vendor.model(scenario), CHAT, timeout=10, call_id="s")
    with pytest.raises(StreamMalformed, match=words) as caught:
        consume(stream)
    assert isinstance(caught.value, BackendError)
    assert caught.value.delivered_chunks == delivered


def test_errors_before_the_first_chunk_raise_from_stream(
    vendor: VendorServer, runtime: OpenAIRuntime
) -> None:
    with pytest.raises(ResourceExhausted):
        runtime.stream(vendor.model("status429"), CHAT, timeout=5, call_id="s")
    with pytest.raises(BackendError, match="did not answer with a stream"):
        runtime.stream(vendor.model("wrongtype"), CHAT, timeout=5, call_id="s")
    with pytest.raises(DeadlineExceeded):
        runtime.stream(vendor.model("never"), CHAT, timeout=0.3, call_id="s")


def test_the_deadline_ends_a_stream_that_trickles(
    vendor: VendorServer, runtime: OpenAIRuntime
) -> None:
    stream = runtime.stream(vendor.model("trickle"), CHAT, timeout=0.6, call_id="s")
    with pytest.raises(DeadlineExceeded):
        consume(stream)
    assert vendor.disconnected.wait(3)


def test_a_buyer_that_cancels_mid_stream_cancels_the_vendor_request(
    vendor: VendorServer, runtime: OpenAIRuntime
) -> None:
    cancellers: list[Canceller] = []
    stream = runtime.stream(
        vendor.model("slowstream"), CHAT, timeout=10, call_id="s", on_cancel=cancellers.append
    )
    assert next(stream).text == "first "
    threading.Timer(0.2, cancellers[0]).start()
    with pytest.raises(Cancelled):
        next(stream)
    assert vendor.disconnected.wait(3), "the vendor never saw the connection go"
    assert stream.delivered_chunks == 1 and not stream.completed


def test_closing_a_stream_early_frees_the_vendor(
    vendor: VendorServer, runtime: OpenAIRuntime
) -> None:
    stream = runtime.stream(vendor.model("slowstream"), CHAT, timeout=10, call_id="s")
    next(stream)
    stream.close()
    assert vendor.disconnected.wait(3)
    assert list(stream) == []


def test_without_usage_request(vendor: VendorServer) -> None:
    rt = OpenAIRuntime(include_stream_usage=False)
    try:
        list(rt.stream(vendor.model("stream"), CHAT, timeout=5, call_id="s"))
    finally:
        rt.close()
    assert "stream_options" not in vendor.seen[0][2]

"""The worker's streaming protocol: chunks as the package yields them, every limit kept.

The package (``stream_pkg``) streams by returning a generator. No test here measures time: that
chunks arrive one by one is shown with a generator that never finishes (``hang``), whose first
chunks are read all the same.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.runtimes.sandbox.errors import (
    SandboxCrashed,
    SandboxLimitExceeded,
    SandboxModelError,
    SandboxTimeout,
)
from broker.runtimes.sandbox.launcher import SandboxLauncher, Worker
from tests.sandbox.conftest import TEST_LIMITS

pytestmark = pytest.mark.sandbox

STREAM_PACKAGE = Path(__file__).parent / "stream_pkg"
CAP = TEST_LIMITS.max_frame_bytes


@pytest.fixture
def worker(launcher: SandboxLauncher) -> Iterator[Worker]:
    """A ``stream_pkg`` worker with the test limits (a 1 MiB frame and answer cap)."""
    worker = launcher.start(STREAM_PACKAGE, limits=TEST_LIMITS, tenant="tenant-a")
    yield worker
    worker.kill()


def read_until_error(stream: Iterator[dict[str, Any]], got: list[dict[str, Any]]) -> None:
    """Append every chunk of ``stream`` to ``got``; the error that ends it propagates."""
    for chunk in stream:
        got.append(chunk)


def test_chunks_arrive_while_the_generator_is_still_running(worker: Worker) -> None:
    stream = worker.stream({"mode": "hang", "count": 2}, timeout=5)
    # The generator never returns (it sleeps after its second chunk), yet both chunks are here:
    # the worker sent each as it was yielded, not the answer once complete.
    assert next(stream) == {"n": 0}
    assert next(stream) == {"n": 1}
    # The deadline covers the whole stream: the hanging worker is killed, not left running.
    with pytest.raises(SandboxTimeout):
        next(stream)
    assert not worker.alive
    assert stream.chunks == 2
    assert not stream.completed


def test_a_complete_stream_frees_the_same_worker_for_the_next_call(worker: Worker) -> None:
    with worker.stream({"mode": "chunks", "count": 5}, timeout=10) as stream:
        assert list(stream) == [{"n": n} for n in range(5)]
        assert stream.completed
        assert stream.answer is None
    assert worker.alive
    assert worker.call({"mode": "whole"}, timeout=10) == {"whole": True}
    assert [c["n"] for c in worker.stream({"mode": "chunks", "count": 2}, timeout=10)] == [0, 1]


def test_a_package_that_answers_in_one_piece_gives_its_answer(worker: Worker) -> None:
    stream = worker.stream({"mode": "whole"}, timeout=10)
    assert stream.answer == {"whole": True}
    assert stream.completed
    assert list(stream) == []
    assert worker.call({"mode": "whole"}, timeout=10) == {"whole": True}


def test_an_exception_mid_stream_ends_it_after_the_chunks_sent(worker: Worker) -> None:
    got: list[dict[str, Any]] = []
    with pytest.raises(SandboxModelError) as caught:
        read_until_error(worker.stream({"mode": "raise", "count": 3}, timeout=10), got)
    assert got == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert caught.value.kind == "ValueError"
    # The model's failure is reported, not fatal: the worker is back in its loop.
    assert worker.alive
    assert worker.call({"mode": "whole"}, timeout=10) == {"whole": True}


def test_a_chunk_that_is_not_an_object_is_refused(worker: Worker) -> None:
    got: list[dict[str, Any]] = []
    with pytest.raises(SandboxModelError, match="model failed"):
        read_until_error(worker.stream({"mode": "not_object", "count": 1}, timeout=10), got)
    assert got == [{"n": 0}]
    assert worker.call({"mode": "whole"}, timeout=10) == {"whole": True}


def test_a_chunk_past_the_frame_cap_is_a_limit(worker: Worker) -> None:
    got: list[dict[str, Any]] = []
    with pytest.raises(SandboxLimitExceeded) as caught:
        read_until_error(
            worker.stream({"mode": "oversize", "count": 1, "size": 2 * CAP}, timeout=10), got
        )
    assert caught.value.limit == "frame"
    assert got == [{"n": 0}]
    assert not worker.alive


def test_an_endless_stream_is_cut_at_the_answer_cap(worker: Worker) -> None:
    """A 1 GiB answer in small chunks is refused like a 1 GiB frame: the total is capped."""
    size = 64 * 1024
    got: list[dict[str, Any]] = []
    with pytest.raises(SandboxLimitExceeded) as caught:
        read_until_error(
            worker.stream({"mode": "flood", "count": 0, "size": size}, timeout=30), got
        )
    assert caught.value.limit == "answer"
    assert 0 < len(got) * size <= CAP
    assert not worker.alive


def test_tiny_chunks_count_against_the_answer_cap(launcher: SandboxLauncher) -> None:
    """Frame headers count too, so the cap bounds the number of chunks, not only their text."""
    limits = dataclasses.replace(TEST_LIMITS, max_frame_bytes=4096)
    with launcher.start(STREAM_PACKAGE, limits=limits, tenant="tenant-a") as worker:
        got: list[dict[str, Any]] = []
        with pytest.raises(SandboxLimitExceeded) as caught:
            read_until_error(worker.stream({"mode": "flood", "count": 0}, timeout=30), got)
        assert caught.value.limit == "answer"
        assert len(got) < 4096 // 4


def test_a_forged_one_gib_header_mid_stream_is_refused_unread(worker: Worker) -> None:
    got: list[dict[str, Any]] = []
    with pytest.raises(SandboxLimitExceeded) as caught:
        read_until_error(worker.stream({"mode": "forge", "count": 1}, timeout=10), got)
    assert caught.value.limit == "frame"
    assert got == [{"n": 0}]
    assert not worker.alive


def test_the_memory_limit_mid_stream_is_reported(worker: Worker) -> None:
    got: list[dict[str, Any]] = []
    with pytest.raises(SandboxLimitExceeded) as caught:
        read_until_error(worker.stream({"mode": "memory", "count": 1}, timeout=30), got)
    assert caught.value.limit == "memory"
    assert got == [{"n": 0}]
    assert not worker.alive


def test_the_cpu_limit_mid_stream_is_reported(worker: Worker) -> None:
    got: list[dict[str, Any]] = []
    with pytest.raises(SandboxLimitExceeded) as caught:
        read_until_error(worker.stream({"mode": "cpu", "count": 1}, timeout=60), got)
    assert caught.value.limit == "cpu"
    assert got == [{"n": 0}]
    assert not worker.alive


def test_closing_a_stream_early_kills_the_worker(worker: Worker) -> None:
    stream = worker.stream({"mode": "hang", "count": 1}, timeout=30)
    assert next(stream) == {"n": 0}
    stream.close()
    assert not worker.alive
    with pytest.raises(SandboxCrashed):
        worker.call({"mode": "whole"}, timeout=10)


def test_closing_a_finished_stream_keeps_the_worker(worker: Worker) -> None:
    stream = worker.stream({"mode": "chunks", "count": 1}, timeout=10)
    assert list(stream) == [{"n": 0}]
    stream.close()
    assert worker.alive


def test_a_unary_call_refuses_a_streamed_answer(worker: Worker) -> None:
    """``call`` does not collect a stream: a package streams only when the request asks."""
    with pytest.raises(SandboxModelError) as caught:
        worker.call({"mode": "chunks", "count": 3}, timeout=10)
    assert caught.value.kind == "unrequested stream"
    assert worker.call({"mode": "whole"}, timeout=10) == {"whole": True}


def test_a_call_waits_for_the_stream_holding_the_worker(worker: Worker) -> None:
    """The stream keeps the worker's lock: a concurrent call neither steals nor mixes frames."""
    stream = worker.stream({"mode": "chunks", "count": 3}, timeout=10)
    assert next(stream) == {"n": 0}
    answers: list[dict[str, Any]] = []
    caller = threading.Thread(
        target=lambda: answers.append(worker.call({"mode": "whole"}, timeout=10))
    )
    caller.start()
    assert list(stream) == [{"n": 1}, {"n": 2}]
    caller.join()
    assert answers == [{"whole": True}]

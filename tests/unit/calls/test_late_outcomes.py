"""LateOutcomes: outcomes the log refused are written once it accepts writes, once each, in order.

The log here is a fake behind the writer's interface (a callable that raises the log's
Unavailable while "down"); the real path, a full disk and then freed space, is
tests/battery/test_faults.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from broker.audit.store import Receipt
from broker.calls.late_outcomes import LateOutcomes
from broker.errors import Unavailable


class FakeLog:
    """Accepts writes only while ``up`` is set; remembers what it wrote."""

    def __init__(self) -> None:
        self.up = threading.Event()
        self.written: list[str] = []
        self.attempts = 0

    def writer(self, call_id: str) -> Callable[[], Receipt]:
        def write() -> Receipt:
            self.attempts += 1
            if not self.up.is_set():
                raise Unavailable("audit log cannot be written: the database's disk is full")
            self.written.append(call_id)
            return Receipt(len(self.written) - 1, b"\0" * 32, call_id)

        return write

    def has_outcome(self, call_id: str) -> bool:
        return call_id in self.written


def wait_for(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` (the writer thread pops an outcome just after writing it)."""
    for _ in range(3000):
        if predicate():
            return
        threading.Event().wait(0.01)
    raise AssertionError("condition not reached in 30 s")


@pytest.fixture
def log() -> FakeLog:
    return FakeLog()


def test_outcomes_wait_while_the_log_is_down_and_are_written_in_order_once_it_is_up(
    log: FakeLog,
) -> None:
    late = LateOutcomes(log.has_outcome, retry_seconds=0.01, max_retry_seconds=0.05)
    for call_id in ("c1", "c2", "c3"):
        late.add(call_id, log.writer(call_id))
    wait_for(lambda: log.attempts >= 3)  # retried while down, without writing anything
    assert log.written == [] and late.pending() == 3
    log.up.set()
    wait_for(lambda: late.pending() == 0)
    assert log.written == ["c1", "c2", "c3"]
    late.close()


def test_an_outcome_already_in_the_log_is_not_written_again(log: FakeLog) -> None:
    log.up.set()
    log.written.append("landed")  # a commit that timed out for its caller, yet landed
    late = LateOutcomes(log.has_outcome, retry_seconds=0.01)
    late.add("landed", log.writer("landed"))
    late.add("next", log.writer("next"))
    wait_for(lambda: late.pending() == 0)
    assert log.written == ["landed", "next"]
    assert log.attempts == 1  # only "next" was written
    late.close()


def test_beyond_max_pending_the_newest_is_dropped(log: FakeLog) -> None:
    late = LateOutcomes(log.has_outcome, retry_seconds=10.0, max_retry_seconds=10.0, max_pending=2)
    for call_id in ("a", "b", "c"):
        late.add(call_id, log.writer(call_id))
    assert late.pending() == 2
    log.up.set()
    late.close()  # the last attempt writes what was kept
    assert log.written == ["a", "b"]


def test_close_makes_a_last_attempt_and_drops_what_the_log_still_refuses(log: FakeLog) -> None:
    late = LateOutcomes(log.has_outcome, retry_seconds=10.0, max_retry_seconds=10.0)
    late.add("never", log.writer("never"))
    late.close()
    assert log.written == [] and late.pending() == 0
    late.add("after-close", log.writer("after-close"))  # refused: nothing retries any more
    assert late.pending() == 0


def test_retry_pauses_must_make_sense() -> None:
    with pytest.raises(ValueError, match="retry pauses"):
        LateOutcomes(lambda _: False, retry_seconds=0)
    with pytest.raises(ValueError, match="retry pauses"):
        LateOutcomes(lambda _: False, retry_seconds=2, max_retry_seconds=1)

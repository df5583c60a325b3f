"""Outcome entries that could not be written when their call ended, written once the log can be.

A call's outcome is written before the caller learns how it ended; when that write fails (a
full disk, a read-only or unreachable database), the caller gets UNAVAILABLE and the answer is
withheld (fail closed). Until now the log then held the call's intent, and perhaps nothing at
all about a call refused for that reason, for good: an auditor saw a call sent to a model with
no word of how it ended.

``LateOutcomes`` keeps such outcomes in memory and writes them as soon as the log accepts
writes again, in order, retrying with a growing pause (``retry_seconds`` doubling up to
``max_retry_seconds``). What a late entry says is what the caller got: status UNAVAILABLE,
error class ``Unavailable``; a unary answer as withheld (no answer digest, nothing billed); a
stream with what was delivered before the failure (digest, chunk count, ``partial``), as the
buyer holds exactly that. The entry's own time is when it was written; its latency is the
call's, measured when it ended.

Bounds and limits, stated plainly:
- at most ``max_pending`` outcomes wait; beyond that the newest is dropped and logged
  (``audit_outcome_dropped``, call id only), since memory must stay bounded while the log is
  down;
- they live in this process: a crash or a stop while the log is still unwritable loses them,
  and ``close`` logs each one it could not write (``audit_outcome_unwritten``);
- an outcome is not written twice: before each write, ``has_outcome(call_id)`` asks the log
  (a commit that timed out for its caller may still have landed).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Final

import sqlalchemy as sa

from broker.audit.entry import KIND_OUTCOME
from broker.audit.store import Receipt
from broker.audit.tables import audit_entries
from broker.errors import BrokerError
from broker.logging import get_logger

_log = get_logger(__name__)

DEFAULT_MAX_PENDING: Final = 10_000

#: Writes the late entry (the call's own outcome, as UNAVAILABLE); raises while the log is down.
Writer = Callable[[], Receipt]


def outcome_lookup(engine: sa.Engine) -> Callable[[str], bool]:
    """``has_outcome`` on the log's database: whether ``call_id`` has an outcome entry."""
    query = (
        sa.select(audit_entries.c.leaf_index)
        .where(audit_entries.c.call_id == sa.bindparam("call_id"))
        .where(audit_entries.c.kind == KIND_OUTCOME)
        .limit(1)
    )

    def has_outcome(call_id: str) -> bool:
        with engine.connect() as conn:
            return conn.execute(query, {"call_id": call_id}).first() is not None

    return has_outcome


class LateOutcomes:
    """A queue of unwritten outcomes and the thread that writes them (see the module docstring)."""

    def __init__(
        self,
        has_outcome: Callable[[str], bool],
        *,
        retry_seconds: float = 0.5,
        max_retry_seconds: float = 10.0,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if retry_seconds <= 0 or max_retry_seconds < retry_seconds or max_pending < 1:
            raise ValueError("retry pauses must be positive and growing; max_pending >= 1")
        self._has_outcome = has_outcome
        self._first_pause = retry_seconds
        self._max_pause = max_retry_seconds
        self._max_pending = max_pending
        self._pending: deque[tuple[str, Writer]] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._thread: threading.Thread | None = None

    def add(self, call_id: str, write: Writer) -> None:
        """Keep ``write`` (the outcome of ``call_id``) to run once the log accepts writes."""
        with self._cond:
            if self._closed or len(self._pending) >= self._max_pending:
                _log.error("audit_outcome_dropped", call_id=call_id, pending=len(self._pending))
                return
            self._pending.append((call_id, write))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="audit-late-outcomes", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        _log.warning("audit_outcome_deferred", call_id=call_id)

    def pending(self) -> int:
        """Outcomes still waiting for the log."""
        with self._cond:
            return len(self._pending)

    def close(self) -> None:
        """Stop retrying: one last attempt at what waits, then log each outcome left unwritten.

        Call it before the audit log itself is closed.
        """
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        self._drain()
        with self._cond:
            left, self._pending = list(self._pending), deque()
        for call_id, _ in left:
            _log.error("audit_outcome_unwritten", call_id=call_id)

    def _run(self) -> None:
        pause = self._first_pause
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
            if self._drain():
                pause = self._first_pause
                continue
            with self._cond:
                if not self._closed:
                    self._cond.wait(pause)
            pause = min(pause * 2, self._max_pause)

    def _drain(self) -> bool:
        """Write what waits, oldest first; False at the first write the log still refuses."""
        while True:
            with self._cond:
                if not self._pending:
                    return True
                call_id, write = self._pending[0]
            try:
                if not self._has_outcome(call_id):
                    receipt = write()
                    _log.info(
                        "audit_outcome_written_late", call_id=call_id, leaf=receipt.leaf_index
                    )
            except BrokerError as exc:
                _log.warning("audit_outcome_still_unwritten", call_id=call_id, error=exc.message)
                return False
            except sa.exc.SQLAlchemyError as exc:  # has_outcome: the database is still down
                error = type(exc).__name__
                _log.warning("audit_outcome_still_unwritten", call_id=call_id, error=error)
                return False
            with self._cond:
                self._pending.popleft()

"""``AuditLog``: durable appends by group commit, and a checkpointer that signs tree heads.

Why group commit: a durable commit costs an fsync (SQLite) or a WAL flush round trip
(PostgreSQL), and the call path must not answer before its entry is durable. Entries queued by
concurrent callers (up to ``batch_max``) are written in one transaction through
:meth:`AuditStore.append` (driver executemany), then every caller gets its receipt.
Throughput grows with concurrency while each caller still waits for its own commit.

Who commits: the callers themselves, as leader and followers (the group commit of many
databases). A caller that finds nobody committing becomes the leader: it takes the queue
(its own entry first) and commits it in its own thread. Callers that arrive meanwhile queue and
block on a lock of their own; when the commit ends, the leader hands the queue to the first of
them (it becomes the next leader) and releases the others with their receipts. So an idle log
answers one append with no thread hand-off at all, and a busy one wakes each waiting caller
exactly once; there is no writer thread to wake per batch and no Event or Condition per entry
(a profile of the former writer thread saw about 1 ms of futex wake-ups per model call).

Flush policy: a leader commits as soon as it leads; it does not wait for a batch to fill.
Batches form on their own under load, from the entries that arrive while the previous commit
is running. ``batch_ms`` adds a wait for more entries before each commit (0, the default:
none); a fixed 2 ms window used to cost every call 4 ms (two appends) at low load and bought no
throughput once the call path stopped making commits of its own (bench/README.md).

Failure is closed: if the batch cannot be written, every caller in it gets ``Unavailable("audit
log cannot be written: ...")`` and the broker refuses the call before anything is sent. A
caller that waits longer than ``append_timeout`` gets ``Unavailable`` too; if its entry was
still queued it is withdrawn, so it never commits behind the caller's back.

The checkpointer thread signs a new checkpoint after the tree grows: woken by each commit of this
process (and polling for growth by other replicas), it signs at most every ``checkpoint_gap``
seconds, so a grown tree has a signed head well within one second. On a SQLite file it also
checkpoints the WAL (``AuditStore.checkpoint_wal``), which SQLite would otherwise do inside
every thousandth page's commit, fsyncs included, while that batch's callers wait.
"""

from __future__ import annotations

import contextlib
import threading
import time
from _thread import allocate_lock
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import sqlalchemy as sa

from broker.audit import entry as entries
from broker.audit.checkpoint import Checkpoint, sign_checkpoint
from broker.audit.entry import Entry, FieldAction
from broker.audit.keys import DigestKeys
from broker.audit.note import Signer, Verifier
from broker.audit.store import AuditStore, Companion, Receipt, StoredCheckpoint, Unless
from broker.errors import Unavailable
from broker.logging import get_logger
from broker.observability import metrics

log = get_logger(__name__)

DEFAULT_APPEND_TIMEOUT_S: Final = 30.0
# A commit slower than this waits on I/O rather than CPU (see AuditLog._let_callers_return).
_SLOW_COMMIT_S: Final = 0.001


def why_not_written(exc: Exception) -> str:
    """What the operator must fix, in words, for a failed commit: a full disk and a read-only
    database are told apart from a database that cannot be reached (the driver's own text
    carries SQL parameters, so it goes to the log only, never to the caller)."""
    text = str(getattr(exc, "orig", None) or exc).lower()
    if "disk is full" in text or "no space left" in text or "could not extend" in text:
        return "the database's disk is full"
    if "readonly database" in text or "read-only" in text:
        return "the database is read-only"
    if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
        return "the database cannot be reached or refused the write"
    return type(exc).__name__


def _unwritten(exc: Exception) -> Unavailable:
    """The error a caller gets for an entry whose commit failed (the cause goes to the log)."""
    return Unavailable(f"audit log cannot be written: {why_not_written(exc)}", log_reason=str(exc))


_NOT_RUNNING: Final = "audit log cannot be written: it is not running"


class _Pending:
    """One caller's entry and, once its batch is done, its receipt or error.

    ``wake`` is created held; the caller blocks acquiring it until the leader releases it,
    either with the outcome or with ``lead`` set (the caller is to commit the next batch).
    A bare lock is the cheapest thing a thread can block on: one allocation, one futex wake.
    """

    __slots__ = ("companions", "done", "entry", "error", "lead", "receipt", "wake")

    def __init__(self, entry: Entry, companions: Sequence[Companion]) -> None:
        self.entry = entry
        self.companions = companions
        self.receipt: Receipt | None = None
        self.error: Exception | None = None
        self.done = False
        self.lead = False
        self.wake = allocate_lock()
        self.wake.acquire()


class AuditLog:
    """The broker's audit log: append entries, get receipts, have checkpoints signed.

    ``tenant_keys`` computes the keyed digests of payloads (see :mod:`broker.audit.keys`);
    The signer's key name must equal ``origin`` (C2SP convention; verifiers rely on it).
    ``clock`` returns seconds since the epoch and is injected so tests control entry times.
    Call :meth:`start` before appending and :meth:`close` on shutdown (it flushes, signs a
    final checkpoint and stops the threads).
    """

    def __init__(
        self,
        engine: sa.Engine,
        *,
        signer: Signer,
        origin: str,
        tenant_keys: DigestKeys,
        batch_ms: float = 0.0,
        batch_max: int = 512,
        clock: Callable[[], float] = time.time,
        checkpoint_gap: float = 0.1,
        checkpoint_poll: float = 0.5,
        append_timeout: float = DEFAULT_APPEND_TIMEOUT_S,
    ) -> None:
        if batch_max < 1 or batch_ms < 0:
            raise ValueError("batch_max must be >= 1 and batch_ms >= 0")
        Checkpoint(origin, 0, bytes(32))  # validates the origin line early
        if signer.name != origin:
            raise ValueError(
                f"the log key is named {signer.name!r}; it must be the origin {origin!r}"
            )
        self.store = AuditStore(engine)
        self.origin = origin
        self._signer = signer
        self._keys = tenant_keys
        self._batch_s = batch_ms / 1000
        self._batch_max = batch_max
        self._clock = clock
        self._gap = checkpoint_gap
        self._poll = checkpoint_poll
        self._timeout = append_timeout
        self._queue: deque[_Pending] = deque()
        # Guards the queue and who leads; waited on only by a leader's batch window and close.
        self._cond = threading.Condition(threading.Lock())
        self._leading = False
        self._last_batch = 0  # entries in the batch last taken (see _let_callers_return)
        self._last_commit_s = 0.0  # and how long its commit took
        self._running = False
        self._closing = False
        self._grew = threading.Event()
        self._stop = threading.Event()
        self._checkpointer: threading.Thread | None = None

    @property
    def verifier(self) -> Verifier:
        """The public key that verifies this log's checkpoints (publish its ``to_vkey()``)."""
        return self._signer.verifier()

    def start(self) -> None:
        """Start the checkpointer thread; appends are committed by their callers."""
        with self._cond:
            if self._running:
                return
            self._running, self._closing = True, False
        self._stop.clear()
        self.store.defer_wal_checkpoints()  # the checkpointer thread runs them instead
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="audit-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def close(self) -> None:
        """Refuse new appends, wait for the queued ones, sign a last checkpoint, stop."""
        with self._cond:
            if not self._running:
                return
            self._closing = True
            while self._leading or self._queue:
                self._cond.wait()
        self._stop.set()
        self._grew.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
        with self._cond:
            self._running = False
        try:
            self.checkpoint_now()
            self.store.defer_wal_checkpoints(False)
            self.store.checkpoint_wal()
        except Exception as exc:  # shutdown must finish; logged
            log.exception("audit_checkpoint_failed", error=type(exc).__name__)

    # -- appending ----------------------------------------------------------------------

    def append(self, entry: Entry, companions: Sequence[Companion] = ()) -> Receipt:
        """Block until ``entry`` is durably committed; its receipt, or Unavailable.

        ``companions`` (rows of other tables) are committed in the same transaction as the
        entry, so they are durable exactly when it is (see :class:`AuditStore`).
        """
        pending = _Pending(entry, companions)
        with self._cond:
            if not self._running or self._closing:
                raise Unavailable(_NOT_RUNNING)
            self._queue.append(pending)
            lead = not self._leading
            if lead:
                self._leading = True
            elif self._batch_s and len(self._queue) >= self._batch_max:
                self._cond.notify_all()  # a leader waiting out its batch window commits now
        if not lead and not pending.wake.acquire(timeout=self._timeout):
            self._give_up(pending)
        if pending.lead or lead:
            self._lead(pending)
        if pending.error is not None:
            raise pending.error
        assert pending.receipt is not None  # set before ``done``
        return pending.receipt

    def _give_up(self, pending: _Pending) -> None:
        """After the timeout: withdraw a queued entry and fail, unless it just got an answer."""
        with self._cond:
            if pending.done or pending.lead:
                return  # released right at the timeout: an outcome, or the queue to commit
            # Not queued any more means in a batch being committed: the caller is told it
            # timed out anyway (fail closed), whatever that commit then does.
            with contextlib.suppress(ValueError):
                self._queue.remove(pending)
        raise Unavailable("audit log cannot be written: the commit timed out")

    def _lead(self, own: _Pending) -> None:
        """Commit one batch from the head of the queue, then pass the lead on or drop it.

        The caller's entry ``own`` is at the head: a caller leads only when it queued into an
        idle log or was handed the queue, whose head it was.
        """
        batch: list[_Pending] = []
        try:
            if self._batch_s:  # the configured window, before the turn: others write meanwhile
                with self._cond:
                    self._wait_for_batch()
            # The batch is taken once the turn is held: callers that queue while another
            # process holds it ride in this batch instead of forming the next one.
            with self.store.write_turn:
                self._let_callers_return()
                with self._cond:
                    count = min(len(self._queue), self._batch_max)
                    batch = [self._queue.popleft() for _ in range(count)]
                    self._last_batch = count
                started = time.perf_counter()
                self._commit(batch)
                self._last_commit_s = time.perf_counter() - started
                metrics.record_audit_batch(len(batch), len(self._queue), self._last_commit_s)
        except Exception as exc:  # the turn could not be taken: fail closed like a commit
            log.exception("audit_append_failed", error=type(exc).__name__, entries=len(batch))
            if not batch:
                with self._cond:
                    self._queue.remove(own)
                batch = [own]
            self._fail([p for p in batch if not p.done], exc)
        finally:
            with self._cond:
                if not batch:  # interrupted before taking the queue: withdraw, do not pass on
                    self._queue.remove(own)
                    batch = [own]
                if self._queue:
                    successor = self._queue[0]
                    successor.lead = True
                    successor.wake.release()
                else:
                    self._leading = False
                    if self._closing:
                        self._cond.notify_all()
            for pending in batch:
                if not pending.done:  # only if the commit itself did not finish
                    pending.error = Unavailable("audit log cannot be written: interrupted")
                    pending.done = True
                if pending is not own:
                    pending.wake.release()

    def _let_callers_return(self) -> None:
        """After a slow commit, yield the GIL while the callers it released come back.

        A leader hands the queue on before it wakes its batch's callers, so the next batch
        holds only those who queued during the last commit: N busy callers settle into two
        alternating batches of N/2. When a commit waits on I/O for longer than
        ``_SLOW_COMMIT_S`` (PostgreSQL's WAL flush: milliseconds), each batch costs the same
        whatever its size, so the leader first lets the runnable callers queue: it yields at
        most once per caller released, only while the queue keeps growing, and for at most a
        quarter of the last commit's time. A fast commit (SQLite, ~0.4 ms of CPU) does not
        wait: there the yielding cost more CPU than the larger batches saved (measured).
        """
        slow, released = self._last_commit_s, self._last_batch - 1
        if slow < _SLOW_COMMIT_S or released <= 0:
            return
        deadline = time.perf_counter() + slow / 4
        seen = len(self._queue)
        while released > 0 and seen < self._batch_max and time.perf_counter() < deadline:
            time.sleep(0)
            now = len(self._queue)
            if now == seen:
                return
            released, seen = released - (now - seen), now

    def _wait_for_batch(self) -> None:
        """Wait up to ``batch_ms`` for the queue to reach ``batch_max`` (holding ``_cond``)."""
        deadline = time.monotonic() + self._batch_s
        while len(self._queue) < self._batch_max and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _now_us(self) -> int:
        return int(self._clock() * 1_000_000)

    def record_call_intent(
        self,
        *,
        call_id: str,
        tenant: str,
        subject: str,
        model: str,
        vendor: str,
        policy_revision: str,
        fields: Sequence[FieldAction],
        request: bytes,
        retention_id: str = "",
        companions: Sequence[Companion] = (),
    ) -> Receipt:
        """Record, before dispatch, what will be sent (``request``: the exact bytes) and where.

        ``companions``: rows that must be durable before the request leaves too (the call's
        token-vault rows), written in the intent's transaction.
        """
        return self.append(
            entries.call_intent(
                time_us=self._now_us(),
                call_id=call_id,
                tenant=tenant,
                subject=subject,
                model=model,
                vendor=vendor,
                policy_revision=policy_revision,
                fields=fields,
                request_digest=self._keys.digest(tenant, request),
                retention_id=retention_id,
            ),
            companions,
        )

    def record_call_outcome(
        self,
        *,
        call_id: str,
        tenant: str,
        subject: str,
        model: str,
        vendor: str,
        intent_index: int | None,
        status: str,
        latency_us: int,
        response: bytes | None,
        error_class: str = "",
        usage: Mapping[str, int] | None = None,
        stream: Mapping[str, int | bool] | None = None,
        retained_record_ids: Sequence[str] = (),
        metering: Mapping[str, int | str] | None = None,
        companions_at: Callable[[int], Sequence[Companion]] | None = None,
    ) -> Receipt:
        """Record, before the answer leaves, how the call ended (``response``: answer bytes).

        ``usage``, ``stream``, ``retained_record_ids`` and ``metering`` are value-free extras
        (see ``entries.call_outcome``). ``companions_at(time_us)`` gives rows to commit with
        the entry, from the entry's own time (a usage record is dated as its entry is).
        """
        digest = "" if response is None else self._keys.digest(tenant, response)
        time_us = self._now_us()
        return self.append(
            entries.call_outcome(
                time_us=time_us,
                call_id=call_id,
                tenant=tenant,
                subject=subject,
                model=model,
                vendor=vendor,
                intent_index=intent_index,
                status=status,
                latency_us=latency_us,
                response_digest=digest,
                error_class=error_class,
                usage=usage,
                stream=stream,
                retained_record_ids=retained_record_ids,
                metering=metering,
            ),
            () if companions_at is None else companions_at(time_us),
        )

    def record_call_preview(
        self,
        *,
        call_id: str,
        tenant: str,
        subject: str,
        model: str,
        vendor: str,
        policy_revision: str,
        fields: Sequence[FieldAction],
        allowed: bool,
    ) -> Receipt:
        """Record a Preview (nothing was sent; the decisions are what the policy would do)."""
        return self.append(
            entries.call_preview(
                time_us=self._now_us(),
                call_id=call_id,
                tenant=tenant,
                subject=subject,
                model=model,
                vendor=vendor,
                policy_revision=policy_revision,
                fields=fields,
                allowed=allowed,
            )
        )

    def record_admin(
        self,
        *,
        kind: str,
        tenant: str,
        actor: str,
        target: str,
        details: Mapping[str, str] | None = None,
    ) -> Receipt:
        """Record an administrative event (``kind`` one of ``entry.ADMIN_KINDS``)."""
        return self.append(self._admin_entry(kind, tenant, actor, target, details))

    def _admin_entry(
        self, kind: str, tenant: str, actor: str, target: str, details: Mapping[str, str] | None
    ) -> Entry:
        return entries.admin_event(
            kind=kind,
            time_us=self._now_us(),
            tenant=tenant,
            actor=actor,
            target=target,
            details=details,
        )

    def record_admin_once(
        self,
        *,
        kind: str,
        tenant: str,
        actor: str,
        target: str,
        details: Mapping[str, str] | None = None,
        latest: bool = False,
    ) -> Receipt | None:
        """:meth:`record_admin`, unless the log already records ``kind`` for ``target``.

        ``latest`` False: unless any ``kind`` entry names ``target``; True: unless the newest
        one does. The check and the append are one transaction under the integrator lock, so
        of several processes or replicas recording the same event at once, exactly one writes
        it (see :class:`~broker.audit.store.Unless`). None when it was recorded already.
        """
        with self._cond:
            if not self._running or self._closing:
                raise Unavailable(_NOT_RUNNING)
        entry = self._admin_entry(kind, tenant, actor, target, details)
        try:
            receipt = self.store.append_unless(entry, Unless(kind, target, latest))
        except Exception as exc:  # fail closed, as a failed batch does
            log.exception("audit_append_failed", error=type(exc).__name__, entries=1)
            raise _unwritten(exc) from exc
        if receipt is not None:
            self._grew.set()
        return receipt

    def _commit(self, batch: list[_Pending]) -> None:
        """Write ``batch`` in one transaction (turn held) and record each receipt or error."""
        try:
            receipts = self.store.append_in_turn(
                [p.entry for p in batch],
                [
                    c if c.leaf_column is None else Companion(c.table, c.rows, c.leaf_column, i)
                    for i, p in enumerate(batch)
                    for c in p.companions
                ],
            )
        except Exception as exc:  # any failure fails the batch closed
            log.exception("audit_append_failed", error=type(exc).__name__, entries=len(batch))
            self._fail(batch, exc)
            return
        for pending, receipt in zip(batch, receipts, strict=True):
            pending.receipt = receipt
            pending.done = True
        self._grew.set()

    @staticmethod
    def _fail(batch: list[_Pending], exc: Exception) -> None:
        for pending in batch:
            pending.error = _unwritten(exc)
            pending.done = True

    # -- checkpoints --------------------------------------------------------------------

    def checkpoint_now(self) -> StoredCheckpoint | None:
        """Sign and store a checkpoint if the tree grew since the last one."""

        def sign(size: int, root: bytes) -> str:
            return sign_checkpoint(Checkpoint(self.origin, size, root), self._signer)

        stored = self.store.add_checkpoint(sign, self._now_us())
        if stored is not None:
            metrics.record_checkpoint(stored.size, stored.time_us / 1_000_000)
        return stored

    def _checkpoint_loop(self) -> None:
        while not self._stop.is_set():
            self._grew.wait(self._poll)
            self._grew.clear()
            try:
                self.checkpoint_now()
                self.store.checkpoint_wal()
            except Exception as exc:  # retried next round; logged
                log.exception("audit_checkpoint_failed", error=type(exc).__name__)
            self._stop.wait(self._gap)

"""``AuditLog``: durable appends by group commit, and a checkpointer that signs tree heads.

Why group commit: a durable commit costs an fsync (SQLite) or a WAL flush round trip
(PostgreSQL), and the call path must not answer before its entry is durable. One background
thread takes every entry queued by concurrent callers (up to ``batch_max``), writes them in one
transaction through :meth:`AuditStore.append` (driver executemany), then wakes every caller with
its receipt. Throughput grows with concurrency while each caller still waits for its own commit.

Flush policy: the writer commits as soon as it finds work; it does not wait for a batch to fill.
Batches form on their own under load, from the entries that arrive while the previous commit is
running, so an idle log answers one append in one commit's time, and a busy one commits many
entries at once. ``batch_ms`` adds a wait for more entries before each commit (0, the default:
none); a fixed 2 ms window used to cost every call 4 ms (two appends) at low load and bought no
throughput once the call path stopped making commits of its own (bench/README.md).

Failure is closed: if the batch cannot be written, every caller in it gets ``Unavailable("audit
log cannot be written: ...")`` and the broker refuses the call before anything is sent.

The checkpointer thread signs a new checkpoint after the tree grows: woken by each commit of this
process (and polling for growth by other replicas), it signs at most every ``checkpoint_gap``
seconds, so a grown tree has a signed head well within one second.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import sqlalchemy as sa

from broker.audit import entry as entries
from broker.audit.checkpoint import Checkpoint, sign_checkpoint
from broker.audit.entry import Entry, FieldAction
from broker.audit.keys import DigestKeys
from broker.audit.note import Signer, Verifier
from broker.audit.store import AuditStore, Companion, Receipt, StoredCheckpoint
from broker.errors import Unavailable
from broker.logging import get_logger

log = get_logger(__name__)

DEFAULT_APPEND_TIMEOUT_S: Final = 30.0


class _Pending:
    """One caller waiting for its entry's commit."""

    __slots__ = ("companions", "done", "entry", "error", "receipt")

    def __init__(self, entry: Entry, companions: Sequence[Companion]) -> None:
        self.entry = entry
        self.companions = companions
        self.done = threading.Event()
        self.receipt: Receipt | None = None
        self.error: Exception | None = None


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
        self._cond = threading.Condition()
        self._running = False
        self._closing = False
        self._grew = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def verifier(self) -> Verifier:
        """The public key that verifies this log's checkpoints (publish its ``to_vkey()``)."""
        return self._signer.verifier()

    def start(self) -> None:
        """Start the writer and checkpointer threads."""
        with self._cond:
            if self._running:
                return
            self._running, self._closing = True, False
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._write_loop, name="audit-writer", daemon=True),
            threading.Thread(target=self._checkpoint_loop, name="audit-checkpoint", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        """Write what is queued, sign a last checkpoint, stop the threads."""
        with self._cond:
            if not self._running:
                return
            self._closing = True
            self._cond.notify_all()
        self._threads[0].join()
        self._stop.set()
        self._grew.set()
        self._threads[1].join()
        with self._cond:
            self._running = False
        try:
            self.checkpoint_now()
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
                raise Unavailable("audit log cannot be written: it is not running")
            self._queue.append(pending)
            if len(self._queue) == 1 or len(self._queue) >= self._batch_max:
                self._cond.notify()  # the writer is the only waiter; it re-checks when done
        if not pending.done.wait(self._timeout):
            raise Unavailable("audit log cannot be written: the commit timed out")
        if pending.error is not None:
            raise pending.error
        assert pending.receipt is not None  # set together with ``done``
        return pending.receipt

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
    ) -> Receipt:
        """Record, before the answer leaves, how the call ended (``response``: answer bytes).

        ``usage``, ``stream`` and ``retained_record_ids`` are value-free extras (see
        ``entries.call_outcome``).
        """
        digest = "" if response is None else self._keys.digest(tenant, response)
        return self.append(
            entries.call_outcome(
                time_us=self._now_us(),
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
            )
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
        return self.append(
            entries.admin_event(
                kind=kind,
                time_us=self._now_us(),
                tenant=tenant,
                actor=actor,
                target=target,
                details=details,
            )
        )

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                deadline = time.monotonic() + self._batch_s
                while len(self._queue) < self._batch_max and not self._closing:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                count = min(len(self._queue), self._batch_max)
                batch = [self._queue.popleft() for _ in range(count)]
            self._commit(batch)

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            receipts = self.store.append(
                [p.entry for p in batch], [c for p in batch for c in p.companions]
            )
        except Exception as exc:  # any failure fails the batch closed
            log.exception("audit_append_failed", error=type(exc).__name__, entries=len(batch))
            for pending in batch:
                pending.error = Unavailable(
                    f"audit log cannot be written: {type(exc).__name__}", log_reason=str(exc)
                )
                pending.done.set()
            return
        for pending, receipt in zip(batch, receipts, strict=True):
            pending.receipt = receipt
            pending.done.set()
        self._grew.set()

    # -- checkpoints --------------------------------------------------------------------

    def checkpoint_now(self) -> StoredCheckpoint | None:
        """Sign and store a checkpoint if the tree grew since the last one."""

        def sign(size: int, root: bytes) -> str:
            return sign_checkpoint(Checkpoint(self.origin, size, root), self._signer)

        return self.store.add_checkpoint(sign, self._now_us())

    def _checkpoint_loop(self) -> None:
        while not self._stop.is_set():
            self._grew.wait(self._poll)
            self._grew.clear()
            try:
                self.checkpoint_now()
            except Exception as exc:  # retried next round; logged
                log.exception("audit_checkpoint_failed", error=type(exc).__name__)
            self._stop.wait(self._gap)

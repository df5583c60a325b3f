"""Scheduled deletion: every broker runs a :class:`DeletionScheduler`; the schedule is the table.

There is no separate queue to lose or replay: a record's ``due_time_us`` *is* its schedule, so
the schedule survives restarts and is the same for every replica. :meth:`Deleter.delete_due`
repeats :func:`~broker.retention.shred.shred_batch` until nothing due is left, so a backlog
(after downtime, or after a hold is lifted) is worked off in one run and nothing is skipped:

- never early: only ``due_time_us <= now``;
- never a held record: :func:`~broker.retention.shred.deletable` excludes record and tenant
  holds; lifting a hold makes the record eligible again at its original due time;
- exactly once across replicas: ``FOR UPDATE SKIP LOCKED`` batches and one receipt row per
  record written in the deleting transaction (see :mod:`broker.retention.shred`).

Time is injected: the thread asks ``now()`` each round, and tests call ``run_once(now)``
directly. Each replica uses its own clock, so keep replica clocks in sync (NTP): a replica whose
clock runs ahead deletes that much early.

Other tables with a TTL (the token vault) plug in as an :class:`ExpiryJob`: a table, its due
column (integer microseconds, or a timezone-aware timestamp) and an optional key column; the
scheduler deletes expired rows in batches with the same locking and reports how many.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import sqlalchemy as sa

from broker.logging import get_logger
from broker.observability import metrics
from broker.retention.keyring import Keyring
from broker.retention.model import (
    DeletionHook,
    DeletionReason,
    EraseResult,
    log_deletion,
    to_us,
    utcnow,
)
from broker.retention.shred import checkpoint_sqlite, deletable, deliver_receipts, shred_batch
from broker.retention.tables import (
    retention_records,
    retention_tenant_holds,
    retention_tenant_keys,
)
from broker.storage.db import for_writes

_log = get_logger(__name__)


class Deleter:
    """Destroys records (by due time or by erasure order) and delivers their receipts."""

    def __init__(
        self,
        engine: sa.Engine,
        keyring: Keyring,
        *,
        on_deleted: DeletionHook = log_deletion,
        batch_size: int = 200,
    ) -> None:
        self._engine = engine
        self._writes = for_writes(engine)
        self._keyring = keyring
        self._on_deleted = on_deleted
        self._batch_size = batch_size
        self._skip_locked = engine.dialect.name == "postgresql"

    def delete_due(self, now: datetime) -> int:
        """Destroy every unheld record due at ``now``, deliver receipts; return how many."""
        now_us = to_us(now)
        where = sa.and_(retention_records.c.due_time_us <= now_us, deletable())
        total = self._drain(where, DeletionReason.TTL, now_us, skip_locked=self._skip_locked)
        self.deliver(now)
        if total:
            checkpoint_sqlite(self._engine)
        return total

    def erase(self, tenant: str, *, subject: str | None, now: datetime) -> EraseResult:
        """Destroy at once every unheld record of ``tenant`` (or of one ``subject`` in it).

        Held records are kept and counted: a legal hold outranks an erasure order. Erasing a
        whole tenant with nothing held also destroys all of its KEK versions.
        """
        now_us = to_us(now)
        c = retention_records.c
        scope = (
            c.tenant == tenant
            if subject is None
            else sa.and_(c.tenant == tenant, c.subject == subject)
        )
        erased = self._drain(
            sa.and_(scope, deletable()), DeletionReason.ERASURE, now_us, skip_locked=False
        )
        keys_destroyed = 0
        with self._writes.begin() as conn:
            if subject is None and conn.dialect.name == "postgresql":
                # Lock the tenant's keys before counting, so a record committed meanwhile by
                # ``retain`` (which reads its key FOR SHARE) is either counted or keyless.
                keys = retention_tenant_keys.c
                conn.execute(sa.select(keys.version).where(keys.tenant == tenant).with_for_update())
            held = int(conn.execute(sa.select(sa.func.count()).where(scope)).scalar_one())
            tenant_hold = conn.execute(
                sa.select(retention_tenant_holds.c.tenant).where(
                    retention_tenant_holds.c.tenant == tenant
                )
            ).first()
            if subject is None and held == 0 and tenant_hold is None:
                keys_destroyed = self._keyring.destroy_tenant(conn, tenant)
        self.deliver(now)
        if erased or keys_destroyed:
            checkpoint_sqlite(self._engine)
        metrics.record_erasure(erased)
        return EraseResult(erased=erased, held=held, keys_destroyed=keys_destroyed)

    def deliver(self, now: datetime) -> int:
        """Deliver every pending receipt (from this or an earlier, interrupted run)."""
        total = 0
        while True:
            done = deliver_receipts(
                self._engine, self._on_deleted, now_us=to_us(now), limit=self._batch_size
            )
            total += done
            if done < self._batch_size:
                return total

    def _drain(
        self,
        where: sa.ColumnElement[bool],
        reason: DeletionReason,
        now_us: int,
        *,
        skip_locked: bool,
    ) -> int:
        total = 0
        while True:
            done = shred_batch(
                self._writes,
                where,
                reason=reason,
                done_us=now_us,
                limit=self._batch_size,
                skip_locked=skip_locked,
            )
            total += done
            if done == 0:
                break
        if total:
            _log.info("retention_records_destroyed", count=total, reason=reason.value)
        return total


@dataclass(frozen=True)
class ExpiryJob:
    """Rows of ``table`` whose ``due_column`` has passed are deleted by every scheduler run.

    ``unit`` says how the column stores time: ``"us"`` (integer microseconds since the epoch,
    as retention does), ``"s"`` (seconds since the epoch, possibly fractional, as the token
    vault's ``expires_at`` does) or ``"datetime"`` (timezone-aware timestamp).
    ``on_expired(count)`` is told how many rows went, for metrics or an audit entry. The token
    vault plugs in with ``ExpiryJob("vault", vault_tokens, "expires_at", unit="s")``.
    """

    name: str
    table: sa.Table
    due_column: str
    unit: Literal["us", "s", "datetime"] = "us"
    on_expired: Callable[[int], None] | None = None


def expire_rows(engine: sa.Engine, job: ExpiryJob, now: datetime, *, batch_size: int) -> int:
    """Delete ``job``'s rows due at ``now`` in batches (SKIP LOCKED on PostgreSQL)."""
    column = job.table.c[job.due_column]
    bound: int | float | datetime = now
    if job.unit == "us":
        bound = to_us(now)
    elif job.unit == "s":
        bound = to_us(now) / 1_000_000
    keys = list(job.table.primary_key.columns)
    writes = for_writes(engine)
    total = 0
    while True:
        with writes.begin() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("PRAGMA secure_delete=ON")
            query = sa.select(*keys).where(column <= bound).limit(batch_size)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = conn.execute(query).all()
            if rows:
                conn.execute(sa.delete(job.table).where(sa.tuple_(*keys).in_(rows)))
        total += len(rows)
        if len(rows) < batch_size:
            break
    if total and job.on_expired is not None:
        job.on_expired(total)
    return total


class DeletionScheduler:
    """A daemon thread that calls :meth:`run_once` every ``interval_s`` seconds.

    ``run_once`` never raises into the thread: a failing round (database down) is logged and
    retried at the next tick, and since the schedule is the table nothing is lost meanwhile.
    """

    def __init__(
        self,
        deleter: Deleter,
        *,
        engine: sa.Engine,
        now: Callable[[], datetime] = utcnow,
        interval_s: float = 30.0,
        batch_size: int = 200,
        jobs: tuple[ExpiryJob, ...] = (),
    ) -> None:
        self._deleter = deleter
        self._engine = engine
        self._now = now
        self._interval_s = interval_s
        self._batch_size = batch_size
        self._jobs = list(jobs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add_job(self, job: ExpiryJob) -> None:
        """Expire ``job``'s table on every run too (call before :meth:`start`)."""
        self._jobs.append(job)

    def run_once(self, now: datetime | None = None) -> int:
        """Delete everything due at ``now`` (default: the injected clock); return the count."""
        moment = now or self._now()
        deleted = self._deleter.delete_due(moment)
        for job in self._jobs:
            expired = expire_rows(self._engine, job, moment, batch_size=self._batch_size)
            if expired:
                _log.info("retention_rows_expired", job=job.name, count=expired)
        return deleted

    def start(self) -> None:
        """Run in a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="retention-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to stop and wait for the round in progress to finish."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def overdue(self, now: datetime | None = None) -> int:
        """Records still stored past their due time (held ones, and any not yet deleted)."""
        moment = to_us(now or self._now())
        query = (
            sa.select(sa.func.count())
            .select_from(retention_records)
            .where(retention_records.c.due_time_us <= moment)
        )
        with self._engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                deleted = self.run_once()
                overdue = self.overdue() if metrics.enabled() else 0
                metrics.record_retention_run(overdue, deleted, failed=0)
            except Exception as exc:  # noqa: BLE001 - keep the thread alive; retried next tick
                _log.error("retention_scheduler_round_failed", error=repr(exc))
                metrics.record_retention_run(0, 0, failed=1)
            self._stop.wait(self._interval_s)

"""Crypto-shredding: destroy records and write their receipts, exactly once per record.

One transaction per batch: lock the records (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so
replicas take disjoint batches; ``BEGIN IMMEDIATE`` on SQLite, where one writer runs at a
time), insert one ``retention_receipts`` row each (primary key = record id, so a second
receipt for the same record cannot exist), delete the record rows. A crash anywhere before the
commit undoes the whole batch, which the next run redoes; after the commit the records are gone
and each has its receipt. Receipts are then *delivered* to ``on_deleted`` from this outbox and
marked; see :data:`broker.retention.model.DeletionHook` for why delivery is at least once.

What "gone" means on each backend:

- SQLite: the deleting transaction turns on ``PRAGMA secure_delete``, so freed cells and pages
  are overwritten with zeros instead of left in place; after the batch a
  ``wal_checkpoint(TRUNCATE)`` copies the zeroed pages into the database file and truncates the
  WAL, whose old frames still held the wrapped data key. The checkpoint waits for readers
  (up to the busy timeout) and is logged if it could not finish; the next batch retries it.
  Blocks the filesystem itself frees are not scrubbed (copy-on-write filesystems and SSDs may
  keep them), which is why the data key is destroyed rather than relying on overwrite alone.
- PostgreSQL: ``DELETE`` only marks tuples dead. ``VACUUM`` makes the space reusable but does
  not zero it; ``VACUUM FULL`` rewrites the table into new files but the old files' blocks are
  freed, not scrubbed; WAL segments, archives (PITR) and base backups keep the old tuples,
  wrapped data keys included, until they expire. Those copies stay unreadable only while the
  tenant KEK that wrapped them is gone too: rotate tenant keys periodically and run
  ``broker retention rewrap --destroy-old-versions`` (or erase the tenant, which destroys all
  its KEKs), so your backup retention plus the rotation period bounds the exposure.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from broker.logging import get_logger
from broker.retention.model import DeletionHook, DeletionReason, from_us
from broker.retention.tables import retention_receipts, retention_records, retention_tenant_holds

_log = get_logger(__name__)

#: Serialises receipt delivery within a process on SQLite, where there are no row locks and
#: holding the write lock while ``on_deleted`` writes the audit log would deadlock.
_DELIVERY_LOCK = threading.Lock()


def deletable() -> sa.ColumnElement[bool]:
    """Records that no hold protects: not held themselves, tenant not under a hold."""
    held_tenants = sa.select(retention_tenant_holds.c.tenant)
    return sa.and_(
        retention_records.c.held.is_(False), retention_records.c.tenant.not_in(held_tenants)
    )


def data_key_id(record_id: str, tenant: str, version: int) -> str:
    """How a receipt names the destroyed data key and the KEK that wrapped it."""
    return f"dek/{record_id}@kek/{tenant}/v{version}"


def shred_batch(
    writes: sa.Engine,
    where: sa.ColumnElement[bool],
    *,
    reason: DeletionReason,
    done_us: int,
    limit: int,
    skip_locked: bool,
) -> int:
    """Destroy up to ``limit`` records matching ``where`` in one transaction; return how many.

    ``skip_locked`` (PostgreSQL only) lets concurrent schedulers take disjoint batches; erasure
    passes False so it waits for rows a scheduler holds and then finds them gone.
    """
    records = retention_records.c
    with writes.begin() as conn:
        postgres = conn.dialect.name == "postgresql"
        if not postgres:
            conn.exec_driver_sql("PRAGMA secure_delete=ON")
        query = (
            sa.select(records.record_id, records.tenant, records.due_time_us, records.key_version)
            .where(where)
            .order_by(records.due_time_us, records.record_id)
            .limit(limit)
        )
        if postgres:
            query = query.with_for_update(skip_locked=skip_locked)
        rows = conn.execute(query).all()
        if not rows:
            return 0
        conn.execute(
            sa.insert(retention_receipts),
            [
                {
                    "record_id": row.record_id,
                    "tenant": row.tenant,
                    "due_time_us": row.due_time_us,
                    "done_time_us": done_us,
                    "key_id": data_key_id(row.record_id, row.tenant, row.key_version),
                    "reason": reason.value,
                    "delivered_us": None,
                }
                for row in rows
            ],
        )
        ids = [row.record_id for row in rows]
        conn.execute(sa.delete(retention_records).where(records.record_id.in_(ids)))
    return len(rows)


def deliver_receipts(engine: sa.Engine, hook: DeletionHook, *, now_us: int, limit: int) -> int:
    """Hand up to ``limit`` undelivered receipts to ``hook``; return how many were delivered.

    Each receipt is marked in its own short transaction right after the hook returns, so a
    crash repeats at most the one delivery in flight. If the hook raises, the error is logged
    and the receipt waits for the next run (nothing is lost).

    On PostgreSQL the receipt row is locked (``SKIP LOCKED``) during its delivery so replicas
    never deliver the same receipt at the same time; the audit sink writes other tables, so the
    lock blocks nobody. SQLite has no row locks and holding its write lock during the hook would
    block the audit log's own writes, so a process-wide lock serialises delivery instead (one
    SQLite node is one process).
    """
    if engine.dialect.name == "postgresql":
        delivered = 0
        for _ in range(limit):
            with engine.begin() as conn:
                rows = _pending(conn, 1, lock=True)
                if not rows or not _call_hook(hook, rows[0]):
                    return delivered
                _mark(conn, rows[0].record_id, now_us)
            delivered += 1
        return delivered
    with _DELIVERY_LOCK:
        with engine.connect() as conn:
            rows = _pending(conn, limit, lock=False)
        delivered = 0
        for row in rows:
            if not _call_hook(hook, row):
                break
            with engine.begin() as conn:
                _mark(conn, row.record_id, now_us)
            delivered += 1
        return delivered


def _pending(conn: sa.Connection, limit: int, *, lock: bool) -> Sequence[Any]:
    query = (
        sa.select(retention_receipts)
        .where(retention_receipts.c.delivered_us.is_(None))
        .order_by(
            retention_receipts.c.done_time_us,
            retention_receipts.c.due_time_us,
            retention_receipts.c.record_id,
        )
        .limit(limit)
    )
    if lock:
        query = query.with_for_update(skip_locked=True)
    return conn.execute(query).all()


def _call_hook(hook: DeletionHook, row: Any) -> bool:
    try:
        hook(
            row.record_id,
            from_us(row.due_time_us),
            from_us(row.done_time_us),
            row.key_id,
            DeletionReason(row.reason),
        )
    except Exception as exc:  # noqa: BLE001 - any sink failure: keep the receipt, retry later
        _log.error("retention_receipt_delivery_failed", record_id=row.record_id, error=repr(exc))
        return False
    return True


def _mark(conn: sa.Connection, record_id: str, now_us: int) -> None:
    conn.execute(
        sa.update(retention_receipts)
        .where(retention_receipts.c.record_id == record_id)
        .values(delivered_us=now_us)
    )


def checkpoint_sqlite(engine: sa.Engine) -> None:
    """Fold the WAL into the database file and truncate it (SQLite only; no-op elsewhere)."""
    if engine.dialect.name != "sqlite":
        return
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        try:
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            result = cursor.fetchone()
        finally:
            cursor.close()
    finally:
        raw.close()
    if result is None or result[0]:
        _log.warning("retention_wal_checkpoint_busy")

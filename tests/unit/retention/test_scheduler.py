"""Deletion: never early, never held, never twice; receipts; erasure; expiry jobs."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import SQLModel

from broker.retention.keyring import Keyring
from broker.retention.model import DeletionReason
from broker.retention.records import RetentionStore
from broker.retention.scheduler import Deleter, DeletionScheduler, ExpiryJob
from broker.retention.tables import retention_receipts, retention_records
from tests.unit.retention.conftest import NOW, Receipts, count


def _pile(store: RetentionStore, n: int, *, tenant: str = "acme", subject: str = "s") -> list[str]:
    return [
        store.retain(
            tenant=tenant,
            subject=subject,
            call_id=f"c{i}",
            model="m",
            request=b"x",
            request_ttl_s=10 + i,
        )[0].record_id
        for i in range(n)
    ]


def test_nothing_is_deleted_before_its_due_time(
    engine: sa.Engine, store: RetentionStore, scheduler: DeletionScheduler, receipts: Receipts
) -> None:
    ids = _pile(store, 3)
    assert scheduler.run_once(NOW + timedelta(seconds=10) - timedelta(microseconds=1)) == 0
    assert scheduler.run_once(NOW + timedelta(seconds=10)) == 1
    assert receipts.ids == ids[:1]
    assert scheduler.run_once(NOW + timedelta(seconds=11)) == 1
    assert count(engine, retention_records) == 1


def test_a_backlog_is_drained_in_one_run_with_one_receipt_each(
    engine: sa.Engine, store: RetentionStore, scheduler: DeletionScheduler, receipts: Receipts
) -> None:
    ids = _pile(store, 30)
    assert scheduler.run_once(NOW + timedelta(days=1)) == 30
    assert sorted(receipts.ids) == sorted(ids)
    assert count(engine, retention_records) == 0
    assert count(engine, retention_receipts) == 30
    record_id, due, done, key_id, reason = receipts.calls[0]
    assert due == NOW + timedelta(seconds=10)
    assert done == NOW + timedelta(days=1)
    assert key_id == f"dek/{record_id}@kek/acme/v1"
    assert reason is DeletionReason.TTL
    assert scheduler.run_once(NOW + timedelta(days=2)) == 0
    assert len(receipts.calls) == 30


def test_held_records_stay_and_go_once_released(
    store: RetentionStore, scheduler: DeletionScheduler, receipts: Receipts
) -> None:
    held, free = _pile(store, 2)
    store.set_record_hold(held, tenant="acme", held=True)
    later = NOW + timedelta(days=1)
    assert scheduler.run_once(later) == 1
    assert receipts.ids == [free]
    store.set_record_hold(held, tenant="acme", held=False)
    assert scheduler.run_once(later) == 1
    assert receipts.ids == [free, held]


def test_a_tenant_hold_blocks_every_record_of_that_tenant(
    store: RetentionStore, scheduler: DeletionScheduler, receipts: Receipts
) -> None:
    _pile(store, 3, tenant="acme")
    other = _pile(store, 1, tenant="globex")
    store.set_tenant_hold("acme", held=True, reason="litigation")
    assert scheduler.run_once(NOW + timedelta(days=1)) == 1
    assert receipts.ids == other
    store.set_tenant_hold("acme", held=False)
    assert scheduler.run_once(NOW + timedelta(days=1)) == 3


def test_erasing_a_subject_spares_others_and_held_records(
    store: RetentionStore, deleter: Deleter, receipts: Receipts
) -> None:
    alice = _pile(store, 3, subject="alice")
    bob = _pile(store, 2, subject="bob")
    store.set_record_hold(alice[0], tenant="acme", held=True)
    result = deleter.erase("acme", subject="alice", now=NOW)
    assert (result.erased, result.held, result.keys_destroyed) == (2, 1, 0)
    assert sorted(receipts.ids) == sorted(alice[1:])
    assert {c[4] for c in receipts.calls} == {DeletionReason.ERASURE}
    remaining, _ = store.list(tenant="acme")
    assert {i.record_id for i in remaining} == {alice[0], *bob}


def test_erasing_a_whole_tenant_destroys_its_keys(
    store: RetentionStore, keyring: Keyring, deleter: Deleter
) -> None:
    _pile(store, 4)
    keyring.rotate("acme")
    _pile(store, 1, tenant="globex")
    result = deleter.erase("acme", subject=None, now=NOW)
    assert (result.erased, result.held, result.keys_destroyed) == (4, 0, 2)
    assert keyring.versions("acme") == []
    assert keyring.versions("globex") == [1]
    (info,) = store.retain(
        tenant="acme", subject="s", call_id="new", model="m", request=b"x", request_ttl_s=5
    )
    assert info.key_id == "kek/acme/v1"
    assert store.get(info.record_id, tenant="acme").payload == b"x"


def test_erasure_under_a_tenant_hold_keeps_everything_and_the_keys(
    store: RetentionStore, keyring: Keyring, deleter: Deleter
) -> None:
    _pile(store, 2)
    store.set_tenant_hold("acme", held=True)
    result = deleter.erase("acme", subject=None, now=NOW)
    assert (result.erased, result.held, result.keys_destroyed) == (0, 2, 0)
    assert keyring.versions("acme") == [1]


def test_a_failing_receipt_sink_loses_nothing(
    engine: sa.Engine, keyring: Keyring, store: RetentionStore
) -> None:
    ids = _pile(store, 3)
    seen: list[str] = []

    def flaky(record_id: str, *_: object) -> None:
        if len(seen) == 1 and not getattr(flaky, "failed", False):
            flaky.failed = True  # type: ignore[attr-defined]
            raise RuntimeError("audit store down")
        seen.append(record_id)

    deleter = Deleter(engine, keyring, on_deleted=flaky)
    assert deleter.delete_due(NOW + timedelta(days=1)) == 3
    assert len(seen) == 1
    assert count(engine, retention_records) == 0
    assert deleter.deliver(NOW + timedelta(days=1)) == 2
    assert sorted(seen) == sorted(ids)
    assert deleter.deliver(NOW + timedelta(days=1)) == 0


def test_expiry_jobs_delete_other_tables_by_due_time(
    engine: sa.Engine, scheduler: DeletionScheduler
) -> None:
    table = sa.Table(
        "vault_test_entries",
        sa.MetaData(),
        sa.Column("token", sa.String(40), primary_key=True),
        sa.Column("expires_us", sa.BigInteger(), nullable=False),
    )
    table.create(engine)
    try:
        due = int((NOW - NOW.replace(year=1970, month=1, day=1, hour=0)).total_seconds() * 1e6)
        with engine.begin() as conn:
            conn.execute(
                sa.insert(table),
                [{"token": f"t{i}", "expires_us": due + i} for i in range(-3, 3)],
            )
        gone: list[int] = []
        scheduler.add_job(ExpiryJob("vault", table, "expires_us", on_expired=gone.append))
        scheduler.run_once(NOW)
        assert gone == [4]
        assert count(engine, table) == 2
    finally:
        table.drop(engine)
    assert "vault_test_entries" not in SQLModel.metadata.tables


def test_the_thread_runs_rounds_until_stopped(
    engine: sa.Engine, deleter: Deleter, store: RetentionStore, receipts: Receipts
) -> None:
    _pile(store, 2)
    scheduler = DeletionScheduler(
        deleter, engine=engine, now=lambda: NOW + timedelta(days=1), interval_s=0.01
    )
    scheduler.start()
    try:
        for _ in range(500):
            if len(receipts.calls) == 2:
                break
            time.sleep(0.01)
    finally:
        scheduler.stop()
    assert len(receipts.calls) == 2


@pytest.mark.parametrize("batch", [1, 3])
def test_small_batches_still_delete_everything(
    engine: sa.Engine, keyring: Keyring, store: RetentionStore, batch: int
) -> None:
    _pile(store, 5)
    got = Receipts()
    deleter = Deleter(engine, keyring, on_deleted=got, batch_size=batch)
    assert deleter.delete_due(NOW + timedelta(days=1)) == 5
    assert len(set(got.ids)) == 5

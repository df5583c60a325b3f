"""After deletion, the SQLite database file and its WAL hold neither the payload nor its key."""

from __future__ import annotations

import secrets
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from broker.retention.keyring import Keyring, LocalKeyWrapper
from broker.retention.records import RetentionStore
from broker.retention.scheduler import Deleter, DeletionScheduler
from broker.retention.shred import checkpoint_sqlite
from broker.retention.tables import retention_records
from broker.storage.db import create_engine_for, migrate
from tests.unit.retention.conftest import NOW, ROOT_KEY


def _disk_bytes(db_file: Path) -> bytes:
    wal = db_file.with_name(db_file.name + "-wal")
    return db_file.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def test_a_deleted_canary_leaves_no_plaintext_and_no_usable_key_on_disk(tmp_path: Path) -> None:
    # SQLite only: on PostgreSQL dead tuples outlive DELETE (see broker.retention.shred), and
    # the guarantee there rests on destroying keys, which test_scheduler covers.
    db_file = tmp_path / "broker.db"
    engine = create_engine_for(f"sqlite:///{db_file}")
    migrate(engine)
    keyring = Keyring.open(engine, LocalKeyWrapper(ROOT_KEY))
    store = RetentionStore(engine, keyring, clock=lambda: NOW)
    scheduler = DeletionScheduler(Deleter(engine, keyring), engine=engine)
    canary = b"CANARY-" + secrets.token_hex(16).encode()
    (info,) = store.retain(
        tenant="acme", subject="s", call_id="c", model="m", request=canary, request_ttl_s=60
    )
    for i in range(20):  # neighbours on the same pages, so the page survives the deletion
        store.retain(
            tenant="acme", subject="s", call_id=f"n{i}", model="m", request=b"n", request_ttl_s=999
        )
    with engine.connect() as conn:
        wrapped, ciphertext = conn.execute(
            sa.select(retention_records.c.wrapped_key, retention_records.c.ciphertext).where(
                retention_records.c.record_id == info.record_id
            )
        ).one()
    checkpoint_sqlite(engine)
    before = _disk_bytes(db_file)
    assert canary not in before  # never written in the clear, not even before deletion
    assert wrapped in before and ciphertext in before  # the scan can see what it looks for

    assert scheduler.run_once(NOW + timedelta(seconds=60)) == 1

    after = _disk_bytes(db_file)
    assert canary not in after
    assert wrapped not in after
    assert wrapped[12:28] not in after  # not even a fragment of the wrapped key
    assert ciphertext not in after
    wal = db_file.with_name(db_file.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    engine.dispose()

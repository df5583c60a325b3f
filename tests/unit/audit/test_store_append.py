"""The append fast path: the cached frontier is used only while this store wrote the tip."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from broker.audit import store as store_module
from broker.audit.merkle import MerkleTree, leaf_hash
from broker.audit.store import AuditStore, Companion, entry_row, integrate
from broker.audit.tables import audit_entries
from broker.enforce.vault import vault_tokens
from broker.storage.db import create_engine_for
from tests.unit.audit.conftest import make_intent


def _node_reads(engine: sa.Engine, fn: object) -> int:
    """How many times ``fn`` made the store read frontier nodes from ``audit_nodes``.

    The append speaks to the driver directly (no SQLAlchemy cursor events), so this counts the
    node-reading statements it asks for; each one is executed once.
    """
    calls: list[int] = []
    original = store_module._nodes_sql

    def counting(count: int, paramstyle: str) -> str:
        calls.append(count)
        return original(count, paramstyle)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store_module, "_nodes_sql", counting)
        assert callable(fn)
        fn()
    return len(calls)


def _tree(engine: sa.Engine) -> MerkleTree:
    with engine.connect() as conn:
        datas = conn.execute(sa.text("SELECT entry FROM audit_entries ORDER BY leaf_index"))
        return MerkleTree(leaf_hash(bytes(d)) for (d,) in datas)


def test_the_writer_of_the_tip_reads_no_nodes(engine: sa.Engine) -> None:
    store = AuditStore(engine)
    assert _node_reads(engine, lambda: store.append([make_intent() for _ in range(5)])) == 0
    assert _node_reads(engine, lambda: store.append([make_intent() for _ in range(3)])) == 0
    fresh = AuditStore(engine)  # knows nothing yet: one query for the frontier
    assert _node_reads(engine, lambda: fresh.append([make_intent()])) == 1
    # The first store's frontier is now stale (the tree grew): it reads again, once.
    assert _node_reads(engine, lambda: store.append([make_intent()])) == 1
    assert _node_reads(engine, lambda: store.append([make_intent()])) == 0
    assert store.root(11) == _tree(engine).root()


def test_interleaved_replicas_build_the_rfc_tree(engine: sa.Engine) -> None:
    other = create_engine_for(engine.url.render_as_string(hide_password=False))
    try:
        stores = [AuditStore(engine), AuditStore(other)]
        for n in range(1, 40):
            stores[n % 3 == 0].append([make_intent() for _ in range(n % 5 + 1)])
        tree = _tree(engine)
        for size in range(1, tree.size + 1, 7):
            assert stores[0].root(size) == tree.root(size)
            assert stores[1].inclusion_proof(size - 1, size) == tree.inclusion_proof(size - 1, size)
    finally:
        other.dispose()


def test_a_failed_batch_leaves_the_cache_as_it_was(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = AuditStore(engine)
    store.append([make_intent() for _ in range(3)])

    def broken(*args: object) -> tuple[object, ...]:
        raise RuntimeError("driver failed mid-batch")

    with monkeypatch.context() as patch:
        patch.setattr(store_module, "_entry_values", broken)
        with pytest.raises(RuntimeError):
            store.append([make_intent() for _ in range(2)])
    assert store.size() == 3
    assert _node_reads(engine, lambda: store.append([make_intent()])) == 0  # tip unchanged
    assert store.root(4) == _tree(engine).root()


def test_entries_and_nodes_are_stored_as_the_exact_bytes(engine: sa.Engine) -> None:
    """The append hands SQLite its BLOBs as bytearrays (``_SQLITE_BLOB``): what is stored and
    read back must still be the entry's bytes and its hashes, as BLOBs, on both engines."""
    store = AuditStore(engine)
    entries = [make_intent() for _ in range(3)]
    receipts = store.append(entries)
    tree = MerkleTree()
    tree.extend([leaf_hash(e.data) for e in entries])
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT entry, entry_hash FROM audit_entries ORDER BY leaf_index")
        ).all()
        leaves = conn.execute(
            sa.text("SELECT hash FROM audit_nodes WHERE level = 0 ORDER BY node_index")
        ).all()
        if engine.dialect.name == "sqlite":
            kinds = conn.execute(
                sa.text(
                    "SELECT DISTINCT typeof(entry) || typeof(entry_hash) FROM audit_entries"
                    " UNION ALL SELECT DISTINCT typeof(hash) FROM audit_nodes"
                )
            ).all()
            assert sorted(k for (k,) in kinds) == ["blob", "blobblob"]
    assert [(bytes(r[0]), bytes(r[1])) for r in rows] == [
        (e.data, r.entry_hash) for e, r in zip(entries, receipts, strict=True)
    ]
    assert [bytes(h) for (h,) in leaves] == [r.entry_hash for r in receipts]
    assert store.root(3) == tree.root()


def test_public_helpers_keep_their_shape() -> None:
    entry = make_intent()
    row = entry_row(5, entry, leaf_hash(entry.data))
    assert list(row) == [c.name for c in audit_entries.columns]
    assert row["actions"] == ",allow,redact," and row["labels"] == ",pii.email,"
    nodes = integrate(1, [bytes(32)], {(0, 0): bytes(32)})
    assert [(n["level"], n["node_index"]) for n in nodes] == [(0, 1), (1, 0)]


def _count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_companion_rows_commit_with_their_entries(engine: sa.Engine) -> None:
    store = AuditStore(engine)
    row = ("TKN-" + "A" * 20, "acme", "call-1", b"sealed", 123.5)
    receipts = store.append([make_intent(), make_intent()], [Companion(vault_tokens, [row])])
    assert [r.leaf_index for r in receipts] == [0, 1]
    with engine.connect() as conn:
        stored = conn.execute(sa.select(vault_tokens)).all()
    assert [tuple(r) for r in stored] == [row]


def test_a_companion_that_cannot_be_written_takes_its_batch_with_it(engine: sa.Engine) -> None:
    store = AuditStore(engine)
    row = ("TKN-" + "B" * 20, "acme", "call-1", b"sealed", 1.0)
    store.append([make_intent()], [Companion(vault_tokens, [row])])
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):  # the same token twice
        store.append([make_intent(), make_intent()], [Companion(vault_tokens, [row])])
    assert _count(engine, audit_entries) == 1
    assert _count(engine, vault_tokens) == 1
    # The cached frontier was not advanced by the failed batch: the next append is sound.
    store.append([make_intent()])
    assert store.root(2) == _tree(engine).root()


def test_checkpoints_sign_the_right_root_from_the_kept_frontier_or_the_database(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = create_engine_for(engine.url.render_as_string(hide_password=False))
    from_database: list[int] = []
    original = store_module._root_from_db

    def counting(cursor: Any, size: int, paramstyle: str) -> bytes:
        from_database.append(1)
        return original(cursor, size, paramstyle)

    monkeypatch.setattr(store_module, "_root_from_db", counting)
    try:
        mine, theirs = AuditStore(engine), AuditStore(other)
        signed: list[tuple[int, bytes]] = []

        def sign(size: int, root: bytes) -> str:
            signed.append((size, root))
            return f"note {size}"

        for n, writer in enumerate([mine, mine, theirs, mine, theirs, theirs]):
            writer.append([make_intent() for _ in range(n + 1)])
            # ``mine`` wrote the tip after rounds 0, 1 and 3 (frontier kept), not otherwise.
            stored = mine.add_checkpoint(sign, time_us=n)
            assert stored is not None
            assert stored.root_hash == _tree(engine).root()
        assert [size for size, _ in signed] == [1, 3, 6, 10, 15, 21]
        assert len(from_database) == 3  # the rounds after ``theirs`` wrote
        assert mine.add_checkpoint(sign, time_us=99) is None  # the tree did not grow
    finally:
        other.dispose()

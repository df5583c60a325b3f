"""The append fast path: the cached frontier is used only while this store wrote the tip."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from broker.audit import store as store_module
from broker.audit.merkle import MerkleTree, leaf_hash
from broker.audit.store import AuditStore, entry_row, integrate
from broker.audit.tables import audit_entries
from broker.storage.db import create_engine_for
from tests.unit.audit.conftest import make_intent


def _node_reads(engine: sa.Engine, fn: object) -> int:
    statements: list[str] = []

    def listen(*args: object) -> None:
        statements.append(str(args[2]))

    sa.event.listen(engine, "before_cursor_execute", listen)
    try:
        assert callable(fn)
        fn()
    finally:
        sa.event.remove(engine, "before_cursor_execute", listen)
    return len([s for s in statements if "FROM audit_nodes" in s])


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


def test_public_helpers_keep_their_shape() -> None:
    entry = make_intent()
    row = entry_row(5, entry, leaf_hash(entry.data))
    assert list(row) == [c.name for c in audit_entries.columns]
    assert row["actions"] == ",allow,redact," and row["labels"] == ",pii.email,"
    nodes = integrate(1, [bytes(32)], {(0, 0): bytes(32)})
    assert [(n["level"], n["node_index"]) for n in nodes] == [(0, 1), (1, 0)]

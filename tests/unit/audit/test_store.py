"""The log store on SQLite and PostgreSQL: integration, proofs, triggers, several writers."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from broker.audit.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from broker.audit.merkle import MerkleTree, leaf_hash, verify_consistency
from broker.audit.note import Signer
from broker.audit.store import AuditStore
from broker.errors import InvalidArgument
from broker.storage.db import create_engine_for, migrate
from tests.unit.audit.conftest import ORIGIN, make_intent
from tests.unit.audit.tamper import execute


def test_batches_integrate_into_the_rfc_tree(engine: sa.Engine) -> None:
    store = AuditStore(engine)
    tree = MerkleTree()
    for n in (1, 2, 3, 5, 8, 13, 1, 31):
        batch = [make_intent() for _ in range(n)]
        receipts = store.append(batch)
        assert [r.leaf_index for r in receipts] == list(range(tree.size, tree.size + n))
        tree.extend(leaf_hash(e.data) for e in batch)
        assert [r.entry_hash for r in receipts] == [leaf_hash(e.data) for e in batch]
    assert store.size() == tree.size == 64
    for size in range(1, tree.size + 1):
        assert store.root(size) == tree.root(size)
        for index in range(0, size, 7):
            assert store.inclusion_proof(index, size) == tree.inclusion_proof(index, size)
        for size1 in range(1, size + 1, 5):
            assert store.consistency_proof(size1, size) == tree.consistency_proof(size1, size)
    assert store.inclusion_proofs([0, 5, 63], 64) == {
        i: tree.inclusion_proof(i, 64) for i in (0, 5, 63)
    }


def test_proofs_are_one_query(engine: sa.Engine, read_statements: list[str]) -> None:
    store = AuditStore(engine)
    store.append([make_intent() for _ in range(100)])
    tree = MerkleTree(leaf_hash(e) for e in _entries(engine))
    read_statements.clear()
    assert store.inclusion_proof(37, 100) == tree.inclusion_proof(37, 100)
    assert store.consistency_proof(37, 100) == tree.consistency_proof(37, 100)
    assert store.inclusion_proofs([3, 99], 100) == {i: tree.inclusion_proof(i) for i in (3, 99)}
    assert store.root(77) == tree.root(77)
    assert len(read_statements) == 4
    assert all("audit_nodes" in s for s in read_statements)


def test_many_proofs_at_once_are_one_query(engine: sa.Engine, read_statements: list[str]) -> None:
    """Exports prove hundreds of entries together: one query, whatever the node count."""
    store = AuditStore(engine)
    store.append([make_intent() for _ in range(1000)])
    tree = MerkleTree(leaf_hash(e) for e in _entries(engine))
    read_statements.clear()
    indices = list(range(0, 1000, 2))  # far more nodes than a UNION of one branch each allows
    assert store.inclusion_proofs(indices, 999) == {
        i: tree.inclusion_proof(i, 999) for i in indices
    }
    assert len(read_statements) == 1


def _entries(engine: sa.Engine) -> list[bytes]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT entry FROM audit_entries ORDER BY leaf_index"))
        return [bytes(r[0]) for r in rows]


def test_bad_proof_requests_are_invalid_arguments(engine: sa.Engine) -> None:
    store = AuditStore(engine)
    store.append([make_intent()])
    with pytest.raises(InvalidArgument):
        store.inclusion_proof(1, 1)
    with pytest.raises(InvalidArgument):
        store.consistency_proof(0, 1)


def test_checkpoints_are_signed_once_per_size_and_all_kept(engine: sa.Engine) -> None:
    store = AuditStore(engine)
    signer = Signer.generate(ORIGIN)

    def sign(size: int, root: bytes) -> str:
        return sign_checkpoint(Checkpoint(ORIGIN, size, root), signer)

    assert store.add_checkpoint(sign, 1) is None  # empty log: nothing to sign
    store.append([make_intent() for _ in range(3)])
    first = store.add_checkpoint(sign, 2)
    assert first is not None
    assert store.add_checkpoint(sign, 3) is None  # no growth
    store.append([make_intent() for _ in range(4)])
    second = store.add_checkpoint(sign, 4)
    assert second is not None
    assert [cp.size for cp in store.checkpoints()] == [3, 7]
    cp, _ = open_checkpoint(second.note, [signer.verifier()], origin=ORIGIN)
    assert cp.root_hash == store.root(7)
    verify_consistency(3, 7, store.consistency_proof(3, 7), first.root_hash, second.root_hash)
    assert store.latest_checkpoint(max_size=5) == first


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit_entries SET tenant = 'evil'",
        "UPDATE audit_entries SET entry = entry",
        "DELETE FROM audit_entries WHERE leaf_index = 0",
        "UPDATE audit_nodes SET hash = hash",
        "DELETE FROM audit_nodes",
        "UPDATE audit_checkpoints SET note = 'x'",
        "DELETE FROM audit_checkpoints",
    ],
)
def test_triggers_refuse_update_and_delete(engine: sa.Engine, sql: str) -> None:
    store = AuditStore(engine)
    store.append([make_intent() for _ in range(4)])
    signer = Signer.generate(ORIGIN)
    store.add_checkpoint(lambda s, r: sign_checkpoint(Checkpoint(ORIGIN, s, r), signer), 1)
    with pytest.raises(sa.exc.DatabaseError, match="append-only"):
        execute(engine, sql)
    assert store.size() == 4
    assert len(store.checkpoints()) == 1


@pytest.mark.postgres
def test_truncate_is_refused_on_postgres(fresh_postgres_url: str) -> None:
    engine = create_engine_for(fresh_postgres_url)
    try:
        migrate(engine)
        AuditStore(engine).append([make_intent()])
        with pytest.raises(sa.exc.DatabaseError, match="append-only"):
            execute(engine, "TRUNCATE audit_entries CASCADE")
    finally:
        engine.dispose()


def test_two_replicas_append_concurrently_without_gaps(engine: sa.Engine) -> None:
    """Two engines (two replicas' pools) interleave batches; indices come from the database."""
    other = create_engine_for(engine.url.render_as_string(hide_password=False))
    stores = [AuditStore(engine), AuditStore(other)]
    receipts: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work(store: AuditStore) -> None:
        try:
            for _ in range(15):
                got = store.append([make_intent() for _ in range(7)])
                with lock:
                    receipts.extend(r.leaf_index for r in got)
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in stores for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.dispose()
    assert not errors
    assert sorted(receipts) == list(range(4 * 15 * 7))
    store = stores[0]
    size = store.size()
    with engine.connect() as conn:
        datas = conn.execute(sa.text("SELECT entry FROM audit_entries ORDER BY leaf_index"))
        tree = MerkleTree(leaf_hash(bytes(d)) for (d,) in datas)
    assert store.root(size) == tree.root()

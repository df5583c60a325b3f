"""A log of one million entries in the store, proven against with O(log n) reads.

Entries are bulk-loaded (the driver's executemany on SQLite, COPY on PostgreSQL) so the test
stays well under a minute, but their rows and tree nodes come from the store's own functions
(``entry_row``, ``frontier_pairs``, ``integrate``): the same code as ``AuditStore.append``.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy as sa

from broker.audit.entry import Entry, admin_event
from broker.audit.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from broker.audit.store import AuditStore, entry_row, frontier_pairs, integrate
from broker.audit.tables import audit_entries, audit_nodes

SIZE = 1_000_000
BATCH = 100_000
_TEMPLATE = (
    b'{"details":{},"kind":"admin.key.created","subject":"ops","target":"k%d",'
    b'"tenant":"acme","time_us":%d,"v":1}'
)


def _entry(i: int) -> Entry:
    """A canonical admin entry without the cost of encoding a million of them one by one."""
    body = {"kind": "admin.key.created", "time_us": i, "tenant": "acme", "subject": "ops"}
    return Entry(body, _TEMPLATE % (i, i))


def test_template_is_canonical() -> None:
    real = admin_event(kind="admin.key.created", time_us=7, tenant="acme", actor="ops", target="k7")
    assert _entry(7).data == real.data


def _bulk_insert(conn: sa.Connection, table: sa.Table, values: list[tuple[Any, ...]]) -> None:
    columns = [c.name for c in table.columns]
    raw = conn.connection.driver_connection
    assert raw is not None
    if conn.dialect.name == "postgresql":
        cursor = raw.cursor()
        with cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
            for value in values:
                copy.write_row(value)
    else:
        marks = ", ".join("?" for _ in columns)
        raw.executemany(f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks})", values)


def _row(i: int, data: bytes, digest: bytes) -> tuple[object, ...]:
    """The row ``entry_row`` makes for ``_entry(i)``, as a tuple (checked below)."""
    return (i, data, digest, i, "admin.key.created", "acme", "ops", "", "", "", "", "", "")


def test_row_shortcut_matches_entry_row() -> None:
    entry = _entry(7)
    row = entry_row(7, entry, leaf_hash(entry.data))
    assert tuple(row[c.name] for c in audit_entries.columns) == _row(
        7, entry.data, leaf_hash(entry.data)
    )


@pytest.mark.slow
def test_one_million_entries(engine: sa.Engine, read_statements: list[str]) -> None:
    started = time.monotonic()
    tree = MerkleTree()
    for start in range(0, SIZE, BATCH):
        datas = [_TEMPLATE % (i, i) for i in range(start, start + BATCH)]
        hashes = [leaf_hash(d) for d in datas]
        frontier = {
            (level, index): tree.get_subtree_hash(index << level, (index + 1) << level)
            for level, index in frontier_pairs(start)
        }
        nodes = integrate(start, hashes, frontier)
        with engine.begin() as conn:
            _bulk_insert(
                conn,
                audit_entries,
                [_row(start + i, d, h) for i, (d, h) in enumerate(zip(datas, hashes, strict=True))],
            )
            _bulk_insert(
                conn, audit_nodes, [(n["level"], n["node_index"], n["hash"]) for n in nodes]
            )
        tree.extend(hashes)
    loaded = time.monotonic() - started
    store = AuditStore(engine)
    # The last batches go through the normal append path on top of the bulk-loaded tree.
    tail = [_entry(SIZE + i) for i in range(3)]
    store.append(tail)
    tree.extend(leaf_hash(e.data) for e in tail)
    size = store.size()
    assert size == SIZE + 3

    read_statements.clear()
    proof_start = time.monotonic()
    root = store.root(size)
    assert root == tree.root()
    for index in (0, 1, 524_287, 524_288, 999_999, SIZE + 2):
        proof = store.inclusion_proof(index, size)
        assert proof == tree.inclusion_proof(index, size)
        verify_inclusion(tree.get_subtree_hash(index, index + 1), index, size, proof, root)
    for old in (1, 3, 65_536, 700_001, SIZE):
        proof = store.consistency_proof(old, size)
        verify_consistency(old, size, proof, tree.root(old), root)
    proving = time.monotonic() - proof_start
    assert len(read_statements) == 1 + 6 + 5  # one query per proof
    print(f"\n{engine.dialect.name}: loaded {SIZE} in {loaded:.1f}s, 12 proofs in {proving:.3f}s")

"""The audit log in the database: sequencing, integration, proofs and checkpoints.

Sequencing and integration in one transaction
---------------------------------------------
A batch of entries is inserted, given leaf indices and folded into the tree in *one*
transaction, under one lock that admits a single integrator at a time across every replica:
``pg_advisory_xact_lock`` on PostgreSQL, the database write lock (``BEGIN IMMEDIATE``) on SQLite.
Inside it the next index is read from the database (``max(leaf_index) + 1``), never from process
memory, so replicas interleave their batches safely. Rows are therefore born with their index and
their tree nodes, nothing is ever updated, and a crash leaves either the whole batch or none of
it. The price, one integrator at a time, is paid per batch, not per entry (group commit).

What an append costs is kept to the round trips that the design needs (lock, read the last leaf,
two inserts, commit): every statement is built once at import, not per call, because building
and cache-keying SQLAlchemy expressions cost more CPU than the database work they describe. The
old nodes a batch hashes against (the *frontier*, O(log n) perfect subtrees) are read in one
query, or not at all when this store wrote the last batch: after each commit the store keeps the
frontier of the tree it left, tagged with that tree's size and last leaf hash, and reuses it only
if the database, read under the integrator lock, still ends at exactly that leaf. Nodes are
immutable once written (append-only tables), so a frontier for a given size and last leaf can
only go stale by the tree growing, which changes the size and forces a read.

Reads that need tree nodes are batched: the proof generators of :mod:`broker.audit.merkle` are
pure functions of the sizes, so they are first run against a recording reader to learn which
perfect subtrees they need, those are fetched with one query, and the generator runs again on
the fetched hashes. A proof thus costs one round trip with O(log n) rows at any size.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

import sqlalchemy as sa

from broker.audit import merkle
from broker.audit.entry import Entry
from broker.audit.merkle import HASH_SIZE, leaf_hash, node_hash
from broker.audit.tables import audit_checkpoints, audit_entries, audit_nodes
from broker.errors import Internal, InvalidArgument
from broker.storage.db import for_writes

#: Names the PostgreSQL advisory lock held by the one integrator (arbitrary, fixed constant).
INTEGRATOR_LOCK_ID: Final = 0x61756469746C6F67
_T = TypeVar("_T")
_Range = tuple[int, int]
_Pair = tuple[int, int]

# Statements built once (see the module docstring): SQLAlchemy then only looks them up in its
# compiled cache on each execution instead of constructing and keying a new expression.
_LOCK_PG: Final = sa.select(sa.func.pg_advisory_xact_lock(INTEGRATOR_LOCK_ID))
_SIZE: Final = sa.select(sa.func.max(audit_entries.c.leaf_index))
_LAST_LEAF: Final = (
    sa.select(audit_entries.c.leaf_index, audit_entries.c.entry_hash)
    .order_by(audit_entries.c.leaf_index.desc())
    .limit(1)
)
_ENTRY_COLUMNS: Final = tuple(c.name for c in audit_entries.columns)
_NODE_COLUMNS: Final = (audit_nodes.c.level, audit_nodes.c.node_index, audit_nodes.c.hash)


@dataclass(frozen=True, slots=True)
class Receipt:
    """Proof of durable acceptance: where the entry sits in the log and what it hashes to."""

    leaf_index: int
    entry_hash: bytes
    call_id: str


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A signed checkpoint as stored: tree size, root, the signed note text and when."""

    size: int
    root_hash: bytes
    note: str
    time_us: int


def _csv_list(values: Iterable[str]) -> str:
    """``,a,b,`` so that ``LIKE '%,a,%'`` matches one whole item on both engines."""
    items = sorted({v for v in values if v})
    return "," + ",".join(items) + "," if items else ""


def entry_row(index: int, entry: Entry, digest: bytes) -> dict[str, object]:
    """The ``audit_entries`` row of ``entry`` at ``index`` with leaf hash ``digest``."""
    return dict(zip(_ENTRY_COLUMNS, _entry_values(index, entry, digest), strict=True))


def _entry_values(index: int, entry: Entry, digest: bytes) -> tuple[object, ...]:
    """:func:`entry_row` as a tuple in ``audit_entries`` column order, for driver executemany."""
    body = entry.body
    fields = body.get("fields", ())
    return (
        index,
        entry.data,
        digest,
        body["time_us"],
        entry.kind,
        body.get("tenant", ""),
        body.get("subject", ""),
        entry.call_id,
        body.get("model", body.get("target", "")),
        body.get("vendor", ""),
        body.get("status", ""),
        _csv_list(f["action"] for f in fields),
        _csv_list(label for f in fields for label in f["labels"]),
    )


def frontier_pairs(size: int) -> list[tuple[int, int]]:
    """``(level, index)`` of the perfect subtrees that make up a tree of ``size`` leaves.

    They are the only old nodes that appending after leaf ``size - 1`` needs: every left
    sibling on the way up from a new leaf is either one of them or itself new.
    """
    return [(level, (size >> level) - 1) for level in range(64) if (size >> level) & 1]


def integrate(
    size: int, hashes: Sequence[bytes], frontier: dict[tuple[int, int], bytes]
) -> list[dict[str, object]]:
    """Node rows for the new leaves (level 0) and every perfect subtree they complete.

    Pure: ``frontier`` maps :func:`frontier_pairs` of ``size`` to their hashes. Used by
    :meth:`AuditStore.append` and by bulk loaders, so there is one way to compute nodes.
    """
    rows, _ = _integrate(size, hashes, frontier)
    return [{"level": lv, "node_index": i, "hash": h} for lv, i, h in rows]


def _integrate(
    size: int, hashes: Sequence[bytes], frontier: dict[_Pair, bytes]
) -> tuple[list[tuple[int, int, bytes]], dict[_Pair, bytes]]:
    """:func:`integrate` as ``audit_nodes`` tuples, with every node it knows (new frontier too)."""
    known = dict(frontier)
    if len(known) != len(frontier_pairs(size)):
        raise Internal("audit log tree is missing nodes: refusing to append")
    rows: list[tuple[int, int, bytes]] = []
    for offset, digest in enumerate(hashes):
        index, level, current = size + offset, 0, digest
        known[(0, index)] = digest
        rows.append((0, index, digest))
        while index & 1:
            current = node_hash(known[(level, index - 1)], current)
            level, index = level + 1, index >> 1
            known[(level, index)] = current
            rows.append((level, index, current))
    return rows, known


def _to_pair(rng: _Range) -> tuple[int, int]:
    start, end = rng
    level = (end - start).bit_length() - 1
    return level, start >> level


class AuditStore:
    """The log's tables on one Engine. Thread-safe: every method is its own transaction."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._writer = for_writes(engine)
        # (size, last leaf hash, frontier of that tree) as this store last committed it; one
        # tuple, replaced whole, so threads never see half of it (see the module docstring).
        self._tip: tuple[int, bytes, dict[_Pair, bytes]] | None = None

    @property
    def engine(self) -> sa.Engine:
        """The engine the log lives on (queries and exports read through it)."""
        return self._engine

    # -- writing ------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> list[Receipt]:
        """Insert, sequence and integrate ``entries`` atomically; return their receipts."""
        if not entries:
            return []
        hashes = [leaf_hash(e.data) for e in entries]
        with self._writer.begin() as conn:
            self._lock(conn)
            size, frontier = self._frontier(conn)
            nodes, known = _integrate(size, hashes, frontier)
            entries_sql, nodes_sql = _inserts(conn.dialect.paramstyle)
            conn.exec_driver_sql(
                entries_sql,
                [
                    _entry_values(size + i, e, h)
                    for i, (e, h) in enumerate(zip(entries, hashes, strict=True))
                ],
            )
            conn.exec_driver_sql(nodes_sql, nodes)
        # Only after the commit: a rolled-back batch must leave no trace in the cache.
        end = size + len(hashes)
        self._tip = (end, hashes[-1], {pair: known[pair] for pair in frontier_pairs(end)})
        return [
            Receipt(size + i, h, e.call_id)
            for i, (e, h) in enumerate(zip(entries, hashes, strict=True))
        ]

    def _frontier(self, conn: sa.Connection) -> tuple[int, dict[_Pair, bytes]]:
        """The tree's size and frontier, read under the lock; cached nodes if still the tip."""
        last = conn.execute(_LAST_LEAF).first()
        if last is None:
            return 0, {}
        size, last_hash = int(last[0]) + 1, bytes(last[1])
        tip = self._tip
        if tip is not None and tip[0] == size and tip[1] == last_hash:
            return size, tip[2]
        return size, _read_frontier(conn, size)

    def _lock(self, conn: sa.Connection) -> None:
        if conn.dialect.name == "postgresql":
            conn.execute(_LOCK_PG)

    def add_checkpoint(
        self, sign: Callable[[int, bytes], str], time_us: int
    ) -> StoredCheckpoint | None:
        """Sign and store a checkpoint of the current tree if it grew; None if it did not.

        Runs under the integrator lock so two replicas never sign two notes for one size.
        ``sign(size, root)`` returns the signed note text.
        """
        with self._writer.begin() as conn:
            self._lock(conn)
            size = _size(conn)
            latest = conn.execute(sa.select(sa.func.max(audit_checkpoints.c.size))).scalar()
            if size == 0 or (latest is not None and latest >= size):
                return None
            root = _prove(conn, lambda read: merkle.subtree_hash(read, 0, size))
            stored = StoredCheckpoint(size, root, sign(size, root), time_us)
            conn.execute(
                audit_checkpoints.insert(),
                {"size": size, "root_hash": root, "note": stored.note, "time_us": time_us},
            )
        return stored

    # -- reading ------------------------------------------------------------------------

    def size(self) -> int:
        """Number of leaves integrated so far."""
        with self._engine.connect() as conn:
            return _size(conn)

    def root(self, size: int) -> bytes:
        """MTH of the first ``size`` leaves, from O(log n) stored nodes."""
        return self._read(lambda conn: _prove(conn, lambda r: merkle.subtree_hash(r, 0, size)))

    def inclusion_proof(self, leaf_index: int, size: int) -> list[bytes]:
        """Inclusion proof of ``leaf_index`` in the tree of ``size`` leaves (one query)."""
        if not 0 <= leaf_index < size:
            raise InvalidArgument(f"leaf index {leaf_index} is not in a tree of size {size}")
        return self._read(
            lambda conn: _prove(conn, lambda r: merkle.inclusion_proof(r, leaf_index, size))
        )

    def inclusion_proofs(self, indices: Sequence[int], size: int) -> dict[int, list[bytes]]:
        """Proofs for many leaves against one size, all their nodes fetched in one query."""
        for index in indices:
            if not 0 <= index < size:
                raise InvalidArgument(f"leaf index {index} is not in a tree of size {size}")

        def build(read: merkle.SubtreeHashReader) -> dict[int, list[bytes]]:
            return {i: merkle.inclusion_proof(read, i, size) for i in indices}

        return self._read(lambda conn: _prove(conn, build))

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        """Consistency proof from ``size1`` to ``size2`` leaves (one query)."""
        if not 0 < size1 <= size2:
            raise InvalidArgument(f"no consistency proof from size {size1} to size {size2}")
        return self._read(
            lambda conn: _prove(conn, lambda r: merkle.consistency_proof(r, size1, size2))
        )

    def checkpoints(self) -> list[StoredCheckpoint]:
        """Every stored checkpoint, oldest first."""
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(audit_checkpoints).order_by(audit_checkpoints.c.size))
            return [StoredCheckpoint(r.size, r.root_hash, r.note, r.time_us) for r in rows]

    def latest_checkpoint(self, *, max_size: int | None = None) -> StoredCheckpoint | None:
        """The newest checkpoint (no larger than ``max_size`` if given), or None."""
        query = sa.select(audit_checkpoints).order_by(audit_checkpoints.c.size.desc()).limit(1)
        if max_size is not None:
            query = query.where(audit_checkpoints.c.size <= max_size)
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        return (
            None
            if row is None
            else StoredCheckpoint(row.size, row.root_hash, row.note, row.time_us)
        )

    def _read(self, fn: Callable[[sa.Connection], _T]) -> _T:
        with self._engine.connect() as conn:
            return fn(conn)


def _size(conn: sa.Connection) -> int:
    value = conn.execute(_SIZE).scalar()
    return 0 if value is None else int(value) + 1


def _read_pairs(
    conn: sa.Connection, pairs: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], bytes]:
    """Hashes of the stored perfect subtrees at ``(level, index)``, in one query."""
    by_level: dict[int, list[int]] = {}
    for level, i in set(pairs):
        by_level.setdefault(level, []).append(i)
    if not by_level:
        return {}
    # One SELECT per level, UNION ALL-ed: each is a primary-key range lookup on both engines
    # (SQLite does not use the index for a row-value IN list).
    queries = [
        sa.select(audit_nodes.c.level, audit_nodes.c.node_index, audit_nodes.c.hash).where(
            audit_nodes.c.level == level, audit_nodes.c.node_index.in_(indices)
        )
        for level, indices in sorted(by_level.items())
    ]
    query: sa.Executable = queries[0] if len(queries) == 1 else sa.union_all(*queries)
    return {
        (int(row[0]), int(row[1])): bytes(row[2])
        for row in conn.execute(query)
        if len(row[2]) == HASH_SIZE
    }


@functools.cache
def _inserts(paramstyle: str) -> tuple[str, str]:
    """INSERT text for entries and nodes in the driver's own placeholder style.

    Rows go to the driver's executemany as plain tuples: SQLAlchemy's per-row parameter
    processing cost more than the inserts themselves, and these columns need no conversion
    (bytes, str and int reach SQLite and psycopg as they are, exactly as bulk loaders send them).
    """
    mark = "?" if paramstyle == "qmark" else "%s"

    def insert(table: sa.Table) -> str:
        names = ", ".join(c.name for c in table.columns)
        marks = ", ".join(mark for _ in table.columns)
        # Names come from this module's Table objects, never from input.
        return f"INSERT INTO {table.name} ({names}) VALUES ({marks})"  # noqa: S608

    return insert(audit_entries), insert(audit_nodes)


def _read_frontier(conn: sa.Connection, size: int) -> dict[_Pair, bytes]:
    """Hashes of :func:`frontier_pairs` of ``size``, in one query built once per pair count.

    Each level holds exactly one frontier node, so the statement only depends on how many there
    are: ``level = :lK AND node_index = :iK`` branches UNION ALL-ed, each a primary-key lookup.
    """
    pairs = frontier_pairs(size)
    params: dict[str, int] = {}
    for k, (level, index) in enumerate(pairs):
        params[f"l{k}"], params[f"i{k}"] = level, index
    rows = conn.execute(_frontier_query(len(pairs)), params)
    return {(int(r[0]), int(r[1])): bytes(r[2]) for r in rows if len(r[2]) == HASH_SIZE}


@functools.cache
def _frontier_query(count: int) -> sa.Executable:
    """The statement :func:`_read_frontier` runs for ``count`` (1 to 64) frontier nodes."""
    branches = [
        sa.select(*_NODE_COLUMNS).where(
            audit_nodes.c.level == sa.bindparam(f"l{k}", type_=sa.SmallInteger()),
            audit_nodes.c.node_index == sa.bindparam(f"i{k}", type_=sa.BigInteger()),
        )
        for k in range(count)
    ]
    return branches[0] if count == 1 else sa.union_all(*branches)


def _prove(conn: sa.Connection, build: Callable[[merkle.SubtreeHashReader], _T]) -> _T:
    """Run ``build`` twice: once to learn which subtrees it reads, once on their fetched hashes."""
    wanted: set[_Range] = set()

    def record(start: int, end: int) -> bytes:
        wanted.add((start, end))
        return bytes(HASH_SIZE)

    build(record)
    fetched = _read_pairs(conn, [_to_pair(r) for r in wanted])

    def read(start: int, end: int) -> bytes:
        digest = fetched.get(_to_pair((start, end)))
        if digest is None:
            raise Internal(f"audit log tree has no node for leaves [{start}, {end})")
        return digest

    return build(read)

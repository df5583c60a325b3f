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

Before it asks the database, a writer takes the store's *write turn* (:mod:`broker.audit.turn`):
a thread lock and, on a SQLite file, an ``flock`` shared by every broker process on that file,
which hands over at once where SQLite's busy handler would sleep milliseconds. The turn only
orders writers; the indices still come from the database under its lock.

What an append costs is kept to the round trips that the design needs (lock, read the last leaf,
two inserts, commit; on PostgreSQL two pipelines, one round trip each), spoken to the driver
directly as fixed text with bind parameters: building, cache-keying and executing SQLAlchemy
expressions cost more CPU than the database work they describe, and the append runs twice per
model call. On a SQLite file the writer keeps one connection of its own, on which the WAL
checkpoints that SQLite would run inside a commit can be deferred to a background thread
(:meth:`AuditStore.defer_wal_checkpoints`, :meth:`AuditStore.checkpoint_wal`). The
old nodes a batch hashes against (the *frontier*, O(log n) perfect subtrees) are read in one
query, or not at all when this store wrote the last batch: after each commit the store keeps the
frontier of the tree it left, tagged with that tree's size and last leaf hash, and reuses it only
if the database, read under the integrator lock, still ends at exactly that leaf. Nodes are
immutable once written (append-only tables), so a frontier for a given size and last leaf can
only go stale by the tree growing, which changes the size and forces a read.

Rows of other tables that must be durable exactly when an entry is (a call's token-vault rows,
which must exist before the call's intent lets the request leave) can ride in the entry's batch
as :class:`Companion` rows: inserted in the same transaction, by the same executemany path, so
the call path pays for one commit instead of two and SQLite has one writer instead of several
racing for its lock. A companion that cannot be written fails the whole batch, like any entry.

Reads that need tree nodes are one query each: :mod:`broker.audit.merkle` says which perfect
subtrees a proof or root folds (its *plan*, pure arithmetic on the sizes), the store fetches
exactly those with one fixed driver statement per node count (prepared once by the driver, so
neither SQLAlchemy nor the database plans anything per proof), and folds them in memory. A
proof thus costs one round trip with O(log n) primary-key lookups at any size.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa

from broker.audit import merkle
from broker.audit.entry import Entry
from broker.audit.merkle import HASH_SIZE, leaf_hash, node_hash
from broker.audit.tables import audit_checkpoints, audit_entries, audit_nodes
from broker.audit.turn import WriterConnection, WriteTurn, lock_path
from broker.errors import Internal, InvalidArgument

#: Names the PostgreSQL advisory lock held by the one integrator (arbitrary, fixed constant).
INTEGRATOR_LOCK_ID: Final = 0x61756469746C6F67
_Range = tuple[int, int]
_Pair = tuple[int, int]

# The writers' statements as driver text (see ``AuditStore._append_in_driver``).
_LOCK_PG_SQL: Final = "SELECT pg_advisory_xact_lock(%s)"
_LAST_LEAF_SQL: Final = (
    "SELECT leaf_index, entry_hash FROM audit_entries ORDER BY leaf_index DESC LIMIT 1"
)
_SIZE_SQL: Final = "SELECT max(leaf_index) FROM audit_entries"
# ``Unless`` checks, in qmark style (``_in_style`` gives PostgreSQL's). Both must read the index
# on (kind, model): the entries of one administrative kind are few whatever the log's size,
# while max(leaf_index) answered by walking the primary key backwards (what SQLite's planner
# picks once ANALYZE has run) reads the whole log under the write lock. SQLite is told the
# index; on PostgreSQL ``+ 0`` takes the primary key out of the max() (no backward scan).
_ANY_RECORDED_SQL: Final = "SELECT 1 FROM audit_entries WHERE kind = ? AND model = ? LIMIT 1"
_LATEST_RECORDED_SQLITE: Final = (
    "SELECT model FROM audit_entries WHERE leaf_index = (SELECT max(leaf_index) FROM "
    "audit_entries INDEXED BY ix_audit_entries_kind_model WHERE kind = ?)"
)
_LATEST_RECORDED_PG: Final = (
    "SELECT model FROM audit_entries WHERE leaf_index = "
    "(SELECT max(leaf_index + 0) FROM audit_entries WHERE kind = %s)"
)
_LATEST_CHECKPOINT_SQL: Final = "SELECT max(size) FROM audit_checkpoints"
_ENTRY_COLUMNS: Final = tuple(c.name for c in audit_entries.columns)
#: What the append hands SQLite its BLOBs as. Python's sqlite3 binds ``bytearray`` (like
#: int, float and str) directly, but looks every ``bytes`` value up in its adapter registry
#: first (a tuple key built, a dict probe, two attribute probes): ~0.5 us per value, four
#: values per entry (its bytes, its leaf hash, ~2 node hashes), all of it holding the GIL.
#: Copying 32-300 bytes into a bytearray costs less, and the stored BLOB is the same.
_SQLITE_BLOB: Final = bytearray
#: WAL frames (pages) above which ``checkpoint_wal`` makes sure the WAL restarts (~32 MB).
WAL_RESTART_FRAMES: Final = 8192


@dataclass(frozen=True, slots=True)
class Receipt:
    """Proof of durable acceptance: where the entry sits in the log and what it hashes to."""

    leaf_index: int
    entry_hash: bytes
    call_id: str


@dataclass(frozen=True, slots=True)
class Companion:
    """Rows of another table, committed in the same transaction as an entry (or not at all).

    ``rows`` are tuples in ``table``'s column order holding values the drivers take as they are
    (str, bytes, int, float), as :meth:`AuditStore.append` sends its own rows.
    """

    table: sa.Table
    rows: Sequence[tuple[object, ...]]
    #: A column of ``rows`` to fill with the leaf index of the entry the companion rides with
    #: (a usage record names its outcome's leaf, which only exists inside the transaction).
    leaf_column: int | None = None
    #: That entry's position in the batch given to :meth:`AuditStore.append` (set by the
    #: writer for companions of queued entries; a direct caller of ``append`` sets it).
    entry_position: int = 0


@dataclass(frozen=True, slots=True)
class Unless:
    """Skip an append when the log already records the same thing (checked under the lock).

    ``latest`` False: when any entry of ``kind`` names ``target`` (a deletion is recorded once);
    True: when the newest entry of ``kind`` names it (a policy revision activated by several
    processes at once is recorded once, and again when it comes back after another). Checked in
    the append's own transaction, after the integrator lock, so exactly one of several processes
    or replicas racing to record the same thing writes it.
    """

    kind: str
    target: str
    latest: bool = False

    def recorded(self, cursor: Any, paramstyle: str) -> bool:
        """Whether the log already records it (``cursor`` inside the append's transaction)."""
        if self.latest:
            latest = _LATEST_RECORDED_SQLITE if paramstyle == "qmark" else _LATEST_RECORDED_PG
            cursor.execute(latest, (self.kind,))
            row = cursor.fetchone()
            return row is not None and row[0] == self.target
        cursor.execute(_in_style(_ANY_RECORDED_SQL, paramstyle), (self.kind, self.target))
        return cursor.fetchone() is not None


def _in_style(sql: str, paramstyle: str) -> str:
    return sql if paramstyle == "qmark" else sql.replace("?", "%s")


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
    return dict(zip(_ENTRY_COLUMNS, _entry_values(index, entry, entry.data, digest), strict=True))


def _entry_values(
    index: int, entry: Entry, data: bytes | bytearray, digest: bytes | bytearray
) -> tuple[object, ...]:
    """:func:`entry_row` as a tuple in ``audit_entries`` column order, for driver executemany.

    ``data`` and ``digest`` are the entry's bytes and leaf hash, as the driver should get them
    (see ``_SQLITE_BLOB``). Runs once per entry inside the write turn, so it reads the body
    directly (no property calls, no list building for entries without fields: every
    administrative one).
    """
    body = entry.body
    get = body.get
    fields = get("fields")
    if fields:
        actions = _csv_list(f["action"] for f in fields)
        labels = _csv_list(label for f in fields for label in f["labels"])
    else:
        actions = labels = ""
    model = get("model")
    return (
        index,
        data,
        digest,
        body["time_us"],
        str(body["kind"]),
        get("tenant", ""),
        get("subject", ""),
        str(get("call_id", "")),
        get("target", "") if model is None else model,
        get("vendor", ""),
        get("status", ""),
        actions,
        labels,
    )


def frontier_pairs(size: int) -> list[tuple[int, int]]:
    """``(level, index)`` of the perfect subtrees that make up a tree of ``size`` leaves.

    They are the only old nodes that appending after leaf ``size - 1`` needs: every left
    sibling on the way up from a new leaf is either one of them or itself new.
    """
    return [(level, (size >> level) - 1) for level in range(size.bit_length()) if size >> level & 1]


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
    if len(known) != size.bit_count():  # one perfect subtree per bit of the size
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
        self._paramstyle: str = engine.dialect.paramstyle
        self._postgres = engine.dialect.name == "postgresql"
        # (size, last leaf hash, frontier of that tree) as this store last committed it; one
        # tuple, replaced whole, so threads never see half of it (see the module docstring).
        self._tip: tuple[int, bytes, dict[_Pair, bytes]] | None = None
        # Appends and checkpoints take turns here before they ask the database for its lock:
        # across threads, and across processes on one SQLite file (see broker.audit.turn).
        lock = lock_path(engine)
        self._write_turn = WriteTurn(lock)
        self._connection = WriterConnection(engine, keep=lock is not None)

    @property
    def engine(self) -> sa.Engine:
        """The engine the log lives on (queries and exports read through it)."""
        return self._engine

    # -- writing ------------------------------------------------------------------------

    @property
    def write_turn(self) -> WriteTurn:
        """The turn :meth:`append` takes; hold it to call :meth:`append_in_turn` yourself.

        Group commit takes its batch only once it holds the turn, so entries that queue while
        another process writes ride in the same batch (see :mod:`broker.audit.writer`).
        """
        return self._write_turn

    def append(
        self, entries: Sequence[Entry], companions: Sequence[Companion] = ()
    ) -> list[Receipt]:
        """Insert, sequence and integrate ``entries`` atomically; return their receipts.

        ``companions`` are written in the same transaction: all of it commits, or none.
        """
        if not entries:
            return []
        with self._write_turn:
            return self.append_in_turn(entries, companions)

    def append_unless(self, entry: Entry, unless: Unless) -> Receipt | None:
        """Append ``entry`` unless the log already records what ``unless`` says; its receipt.

        None when it was already recorded (nothing is written). For rare administrative
        entries: it takes the write turn itself, outside the group commit.
        """
        with self._write_turn:
            receipts = self.append_in_turn([entry], unless=unless)
        return receipts[0] if receipts else None

    def append_in_turn(
        self,
        entries: Sequence[Entry],
        companions: Sequence[Companion] = (),
        *,
        unless: Unless | None = None,
    ) -> list[Receipt]:
        """:meth:`append` for a caller that already holds :attr:`write_turn`.

        With ``unless``: nothing is written, and no receipt returned, if the log already
        records it (see :class:`Unless`).
        """
        if not entries:
            return []
        hashes = [leaf_hash(e.data) for e in entries]
        with self._connection.driver() as driver:
            appended = self._append_in_driver(driver, entries, hashes, companions, unless)
        if appended is None:
            return []
        size, known = appended
        # Only after the commit: a rolled-back batch must leave no trace in the cache.
        end = size + len(hashes)
        self._tip = (end, hashes[-1], {pair: known[pair] for pair in frontier_pairs(end)})
        return [
            Receipt(size + i, h, e.call_id)
            for i, (e, h) in enumerate(zip(entries, hashes, strict=True))
        ]

    def _append_in_driver(
        self,
        driver: Any,
        entries: Sequence[Entry],
        hashes: list[bytes],
        companions: Sequence[Companion],
        unless: Unless | None = None,
    ) -> tuple[int, dict[_Pair, bytes]] | None:
        """The append's one transaction, spoken to the driver directly; (old size, nodes).

        None, rolled back, when ``unless`` finds the entry already recorded.

        Every statement here is fixed text with bind parameters, so SQLAlchemy has nothing to
        compile; going around its execution layer (begin hook, execution contexts, result
        objects) halves the CPU of a small batch, which is the common case at low load. The
        connection still comes from SQLAlchemy's pool (see ``WriterConnection``). Driver errors
        propagate as they are; the caller fails the batch on any error.
        """
        postgres, paramstyle = self._postgres, self._paramstyle
        cursor = driver.cursor()
        try:
            if postgres:
                # One round trip: the lock, then (a statement of its own, so its snapshot is
                # taken once the lock is held) the last leaf.
                locking = driver.cursor()
                with driver.pipeline():
                    locking.execute(_LOCK_PG_SQL, (INTEGRATOR_LOCK_ID,))
                    cursor.execute(_LAST_LEAF_SQL)
                locking.close()
            else:
                cursor.execute("BEGIN IMMEDIATE")  # the connection runs in driver autocommit
                cursor.execute(_LAST_LEAF_SQL)
            size, frontier = self._frontier(cursor, cursor.fetchone(), paramstyle)
            if unless is not None and unless.recorded(cursor, paramstyle):
                driver.rollback()
                return None
            nodes, known = _integrate(size, hashes, frontier)
            blob = bytes if postgres else _SQLITE_BLOB
            rows = [
                _entry_values(size + i, e, blob(e.data), blob(h))
                for i, (e, h) in enumerate(zip(entries, hashes, strict=True))
            ]
            node_rows = nodes if postgres else [(lv, i, blob(h)) for lv, i, h in nodes]
            # PostgreSQL: the inserts and the COMMIT go in one pipeline, one round trip.
            with driver.pipeline() if postgres else contextlib.nullcontext():
                cursor.executemany(_insert_sql(audit_entries, paramstyle), rows)
                cursor.executemany(_insert_sql(audit_nodes, paramstyle), node_rows)
                for table, companion_rows in _group(companions, size):
                    cursor.executemany(_insert_sql(table, paramstyle), companion_rows)
                driver.commit()
        except BaseException:
            driver.rollback()
            raise
        finally:
            cursor.close()
        return size, known

    def _frontier(
        self, cursor: Any, last: Sequence[Any] | None, paramstyle: str
    ) -> tuple[int, dict[_Pair, bytes]]:
        """The tree's size and frontier from its ``last`` leaf row, read under the lock.

        The frontier is the cached one if the database still ends at the leaf this store
        wrote last, else read with one query on ``cursor``.
        """
        if last is None:
            return 0, {}
        size, last_hash = int(last[0]) + 1, bytes(last[1])
        tip = self._tip
        if tip is not None and tip[0] == size and tip[1] == last_hash:
            return size, tip[2]
        return size, _fetch_nodes(cursor, frontier_pairs(size), paramstyle)

    def defer_wal_checkpoints(self, defer: bool = True) -> None:
        """Take WAL checkpoints off the append path; the caller then runs :meth:`checkpoint_wal`.

        SQLite files only (a no-op elsewhere). See ``WriterConnection.defer_wal_checkpoints``.
        """
        with self._write_turn:
            self._connection.defer_wal_checkpoints(defer)

    def checkpoint_wal(self, max_frames: int = WAL_RESTART_FRAMES) -> None:
        """Copy committed WAL pages into a SQLite database file, off the append path.

        A passive checkpoint runs beside the appends (it takes no write lock), so its copying
        and fsyncs no longer stall a batch. SQLite only restarts the WAL from its beginning
        when a write finds every frame copied, which a checkpoint racing the appends rarely
        leaves behind; so once more than ``max_frames`` remain in the WAL, a second passive
        checkpoint runs holding the write turn (it has only the frames written meanwhile to
        copy) and the next append restarts the WAL. No-op on PostgreSQL and in-memory SQLite.
        """
        if self._write_turn.path is None:
            return
        with self._cursor() as cursor:
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
            _busy, frames, _copied = cursor.fetchone()
            if frames > max_frames:
                with self._write_turn:
                    cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    cursor.fetchall()

    def add_checkpoint(
        self, sign: Callable[[int, bytes], str], time_us: int
    ) -> StoredCheckpoint | None:
        """Sign and store a checkpoint of the current tree if it grew; None if it did not.

        Runs under the integrator lock so two replicas never sign two notes for one size.
        ``sign(size, root)`` returns the signed note text. Spoken to the driver on the writer's
        connection, as the append is: the checkpointer runs up to ten times a second in every
        broker process and holds the write turn meanwhile, and SQLAlchemy's execution layer
        (begin hook, expression compile and cache key, result objects) cost more than the
        transaction's database work. On a SQLite file that connection also has SQLite's WAL
        auto-checkpoint off, so no commit here copies the WAL with the turn held.
        """
        with self._write_turn, self._connection.driver() as driver:
            return self._checkpoint_in_driver(driver, sign, time_us)

    def _checkpoint_in_driver(
        self, driver: Any, sign: Callable[[int, bytes], str], time_us: int
    ) -> StoredCheckpoint | None:
        """:meth:`add_checkpoint`'s one transaction; driver errors propagate (rolled back)."""
        postgres, paramstyle = self._postgres, self._paramstyle
        cursor = driver.cursor()
        try:
            if postgres:
                cursor.execute(_LOCK_PG_SQL, (INTEGRATOR_LOCK_ID,))
            else:
                cursor.execute("BEGIN IMMEDIATE")  # the connection runs in driver autocommit
            cursor.execute(_LAST_LEAF_SQL)
            last = cursor.fetchone()
            cursor.execute(_LATEST_CHECKPOINT_SQL)
            latest = cursor.fetchone()[0]
            size = 0 if last is None else int(last[0]) + 1
            if last is None or (latest is not None and latest >= size):
                driver.rollback()
                return None
            root = self._tip_root(size, bytes(last[1]))
            if root is None:
                root = _root_from_db(cursor, size, paramstyle)
            stored = StoredCheckpoint(size, root, sign(size, root), time_us)
            blob = bytes if postgres else _SQLITE_BLOB
            cursor.execute(
                _insert_sql(audit_checkpoints, paramstyle),
                (size, blob(root), stored.note, time_us),
            )
            driver.commit()
        except BaseException:
            driver.rollback()
            raise
        finally:
            cursor.close()
        return stored

    def _tip_root(self, size: int, last_hash: bytes) -> bytes | None:
        """The root from the frontier this store kept, if it still describes the tree; or None.

        The perfect subtrees ``subtree_hash`` reads for ``[0, size)`` are exactly the frontier
        of ``size``, so a store that wrote the tip signs without a node query, and holds the
        integrator lock (which its own appends wait for) for less time.
        """
        tip = self._tip
        if tip is None or tip[0] != size or tip[1] != last_hash:
            return None
        nodes = tip[2]
        try:
            return merkle.subtree_hash(lambda lo, hi: nodes[_to_pair((lo, hi))], 0, size)
        except KeyError:  # pragma: no cover - the frontier is complete by construction
            return None

    # -- reading ------------------------------------------------------------------------

    def size(self) -> int:
        """Number of leaves integrated so far."""
        with self._cursor() as cursor:
            cursor.execute(_SIZE_SQL)
            value = cursor.fetchone()[0]
        return 0 if value is None else int(value) + 1

    def root(self, size: int) -> bytes:
        """MTH of the first ``size`` leaves, from O(log n) stored nodes (one query)."""
        return self._prove([merkle.subtree_chunks(0, size)])[0]

    def inclusion_proof(self, leaf_index: int, size: int) -> list[bytes]:
        """Inclusion proof of ``leaf_index`` in the tree of ``size`` leaves (one query)."""
        if not 0 <= leaf_index < size:
            raise InvalidArgument(f"leaf index {leaf_index} is not in a tree of size {size}")
        return self._prove(merkle.inclusion_plan(leaf_index, size))

    def inclusion_proofs(self, indices: Sequence[int], size: int) -> dict[int, list[bytes]]:
        """Proofs for many leaves against one size, all their nodes fetched in one query."""
        for index in indices:
            if not 0 <= index < size:
                raise InvalidArgument(f"leaf index {index} is not in a tree of size {size}")
        plans = {i: merkle.inclusion_plan(i, size) for i in indices}
        nodes = self._read_nodes(_plan_pairs(p for plan in plans.values() for p in plan))
        return {i: _prove_from(nodes, plan) for i, plan in plans.items()}

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        """Consistency proof from ``size1`` to ``size2`` leaves (one query)."""
        if not 0 < size1 <= size2:
            raise InvalidArgument(f"no consistency proof from size {size1} to size {size2}")
        return self._prove(merkle.consistency_plan(size1, size2))

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

    def _prove(self, plan: merkle.ProofPlan) -> list[bytes]:
        """The hashes of ``plan``: its nodes read in one query, then folded in memory."""
        return _prove_from(self._read_nodes(_plan_pairs(plan)), plan)

    def _read_nodes(self, pairs: Sequence[_Pair]) -> dict[_Pair, bytes]:
        with self._cursor() as cursor:
            return _fetch_nodes(cursor, pairs, self._paramstyle)

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[Any]:
        """A driver cursor on a pooled connection, for reads of one fixed statement each.

        Each statement is its own snapshot, in driver autocommit: SQLite connections always run
        so (``broker.storage.db``); a PostgreSQL connection is switched for the read (a local
        setting while idle), which spares the BEGIN and ROLLBACK round trips that a one-query
        transaction would add to the query's own.
        """
        pooled = self._engine.raw_connection()
        try:
            postgres = self._postgres
            if postgres:
                pooled.driver_connection.autocommit = True  # type: ignore[union-attr]
            cursor = pooled.cursor()
            try:
                yield cursor
            finally:
                cursor.close()
                if postgres:
                    pooled.driver_connection.autocommit = False  # type: ignore[union-attr]
        finally:
            pooled.close()


@functools.cache
def _insert_sql(table: sa.Table, paramstyle: str) -> str:
    """INSERT text for every column of ``table`` in the driver's own placeholder style.

    Rows go to the driver's executemany as plain tuples: SQLAlchemy's per-row parameter
    processing cost more than the inserts themselves, and these columns need no conversion
    (bytes, str, int and float reach SQLite and psycopg as they are, exactly as bulk loaders
    send them).
    """
    mark = "?" if paramstyle == "qmark" else "%s"
    names = ", ".join(c.name for c in table.columns)
    marks = ", ".join(mark for _ in table.columns)
    # Names come from Table objects defined in code, never from input.
    return f"INSERT INTO {table.name} ({names}) VALUES ({marks})"  # noqa: S608


def _group(
    companions: Sequence[Companion], size: int
) -> list[tuple[sa.Table, list[tuple[object, ...]]]]:
    """Companion rows gathered per table (in first-seen order), one executemany each.

    ``size`` is the tree size before the batch: a companion's ``leaf_column`` gets
    ``size + entry_position``, its entry's leaf index.
    """
    by_table: dict[sa.Table, list[tuple[object, ...]]] = {}
    for companion in companions:
        if not companion.rows:
            continue
        rows = companion.rows
        column = companion.leaf_column
        if column is not None:
            leaf = size + companion.entry_position
            rows = [(*row[:column], leaf, *row[column + 1 :]) for row in rows]
        by_table.setdefault(companion.table, []).extend(rows)
    return list(by_table.items())


@functools.cache
def _nodes_sql(count: int, paramstyle: str) -> str:
    """Driver text reading ``count`` nodes, bound as ``level, index`` pairs in order.

    The text depends only on how many nodes are read, so each count is one prepared statement
    in the driver's cache (sqlite3's statement cache, psycopg's automatic prepare): no
    expression building, no planning per proof. ``level = ? AND node_index = ?`` branches are
    UNION ALL-ed, each a primary-key lookup on both engines (SQLite does not use the index for
    a row-value IN list). On PostgreSQL (``%s`` marks) each branch also says ``LIMIT 1``, which
    the key implies: without it, a table not yet analyzed (a log just restored or bulk-loaded)
    looked costly enough for a parallel plan, whose workers took 7-9 ms to start per proof.
    """
    if paramstyle == "qmark":
        return " UNION ALL ".join(
            ["SELECT level, node_index, hash FROM audit_nodes WHERE level = ? AND node_index = ?"]
            * count
        )
    branch = (
        "(SELECT level, node_index, hash FROM audit_nodes"
        " WHERE level = %s AND node_index = %s LIMIT 1)"
    )
    return " UNION ALL ".join([branch] * count)


def _plan_pairs(plan: Iterable[Sequence[_Range]]) -> list[_Pair]:
    """The ``(level, index)`` keys of every subtree a proof plan folds, each once, sorted."""
    return sorted({_to_pair(r) for chunks in plan for r in chunks})


def _fetch_nodes(cursor: Any, pairs: Sequence[_Pair], paramstyle: str) -> dict[_Pair, bytes]:
    """Hashes of the stored perfect subtrees at ``pairs``, in one query.

    Up to ``_MAX_FIXED_NODES`` (any single proof or root) the text is fixed per count; beyond
    (many proofs at once, as exports ask) one branch per tree level with an IN list, which
    stays within SQLite's 500 UNION terms at any count.
    """
    if not pairs:
        return {}
    if len(pairs) <= _MAX_FIXED_NODES:
        cursor.execute(_nodes_sql(len(pairs), paramstyle), [n for pair in pairs for n in pair])
    else:
        cursor.execute(*_nodes_by_level(pairs, paramstyle))
    return {
        (int(r[0]), int(r[1])): bytes(r[2]) for r in cursor.fetchall() if len(r[2]) == HASH_SIZE
    }


_MAX_FIXED_NODES: Final = 2 * 64  # no proof in a tree of 2**64 leaves reads more


def _nodes_by_level(pairs: Sequence[_Pair], paramstyle: str) -> tuple[str, list[int]]:
    """Driver text and parameters reading ``pairs`` with one IN list per tree level."""
    mark = "?" if paramstyle == "qmark" else "%s"
    by_level: dict[int, list[int]] = {}
    for level, index in pairs:
        by_level.setdefault(level, []).append(index)
    branches, params = [], []
    for level, indices in sorted(by_level.items()):
        marks = ", ".join([mark] * len(indices))
        branches.append(
            f"SELECT level, node_index, hash FROM audit_nodes "  # noqa: S608 - marks only
            f"WHERE level = {mark} AND node_index IN ({marks})"
        )
        params += [level, *indices]
    return " UNION ALL ".join(branches), params


def _root_from_db(cursor: Any, size: int, paramstyle: str) -> bytes:
    """MTH of the first ``size`` leaves, its O(log n) nodes read in one query on ``cursor``."""
    plan = [merkle.subtree_chunks(0, size)]
    return _prove_from(_fetch_nodes(cursor, _plan_pairs(plan), paramstyle), plan)[0]


def _prove_from(nodes: dict[_Pair, bytes], plan: merkle.ProofPlan) -> list[bytes]:
    """Fold ``plan`` over fetched ``nodes``; a node the tree lacks is an Internal error."""

    def read(start: int, end: int) -> bytes:
        digest = nodes.get(_to_pair((start, end)))
        if digest is None:
            raise Internal(f"audit log tree has no node for leaves [{start}, {end})")
        return digest

    return merkle.prove(read, plan)

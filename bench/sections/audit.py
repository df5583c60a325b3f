"""Audit log: Merkle core in memory, and the durable log on SQLite and PostgreSQL.

``merkle`` times the pure core (``broker.audit.merkle.MerkleTree``, which keeps perfect-subtree
hashes by (level, index) exactly as a store does): appends per second, and inclusion and
consistency proofs, generated and verified, in a tree of ``settings.merkle_entries`` leaves
(one million by default). A proof costs O(log n) reads, so these figures are the floor a
database-backed store adds its reads to.

``durable`` measures what the broker really pays, through ``broker.audit.writer.AuditLog`` as
``broker serve`` builds it (group commit with the configured ``batch_ms``/``batch_max``, the
checkpointer signing in the background) on a throwaway database:

- a log of ``merkle_entries`` entries is bulk-loaded first (the way
  ``tests/unit/audit/test_million.py`` does: driver ``executemany`` on SQLite, ``COPY`` on
  PostgreSQL, rows and tree nodes made by the store's own ``entry_row`` / ``integrate``), because
  appending a million entries one batch at a time would take minutes and measure nothing new;
- proofs are then generated from the database by ``AuditStore.inclusion_proof`` and
  ``consistency_proof`` (one query of O(log n) rows each) and checked against the stored root
  before being timed, so a figure is never the time of a wrong answer;
- durable appends/s: 1 and ``settings.concurrency`` threads call ``record_admin`` back to back
  for ``settings.duration`` seconds on top of that log; each call returns only once its batch is
  committed, so 1 thread shows the commit latency and many threads show what group commit buys.

PostgreSQL runs only if the server at ``BROKER_BENCH_PG_URL`` (default: the test server,
``postgresql+psycopg://postgres@127.0.0.1:5432/test``) answers; the bench creates a database of
its own there and drops it afterwards. Otherwise it prints that PostgreSQL was skipped.
``temporary_database`` and ``open_audit_log`` are shared with the retention section, which
needs the same throwaway databases and the same log.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import sqlalchemy as sa

from bench.micro import seconds_per_call
from bench.sections import Section
from bench.settings import Settings
from bench.stats import Figure

if TYPE_CHECKING:  # imported lazily at run time: the section must load without them
    from broker.audit.entry import Entry
    from broker.audit.writer import AuditLog

PG_ADMIN_URL: Final = os.environ.get(
    "BROKER_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
SQLITE: Final = "sqlite"
POSTGRES: Final = "postgresql"
_ORIGIN: Final = "bench.local/audit"
_LOAD_BATCH: Final = 100_000
# An admin entry in canonical form, so a million entries need no JSON encoding one by one;
# ``_bulk_entry`` checks it against ``admin_event`` before loading anything.
_TEMPLATE: Final = (
    b'{"details":{},"kind":"admin.key.created","subject":"ops","target":"k%d",'
    b'"tenant":"acme","time_us":%d,"v":1}'
)


def run_merkle(settings: Settings) -> list[Figure]:
    """Build one tree of ``merkle_entries`` leaves once, then time appends and proofs."""
    from broker.audit import merkle  # noqa: PLC0415 - optional module

    n = settings.merkle_entries
    leaves = [merkle.leaf_hash(i.to_bytes(8, "big")) for i in range(n)]
    tree = merkle.MerkleTree()
    t0 = time.perf_counter()
    tree.extend(leaves)
    build = time.perf_counter() - t0
    root = tree.root()
    rng = random.Random(7)  # noqa: S311 - a reproducible choice of leaves, not crypto
    appends = Figure("Merkle appends (in memory)", "appends/s", note=f"first {n:,} leaves")
    appends.add(n / build)
    incl = Figure(f"inclusion proof at {n:,} entries, generate", "µs")
    incl_v = Figure(f"inclusion proof at {n:,} entries, verify", "µs")
    cons = Figure(f"consistency proof {n // 2:,} -> {n:,}, generate", "µs")
    cons_v = Figure(f"consistency proof {n // 2:,} -> {n:,}, verify", "µs")
    old_root = tree.root(n // 2)
    for _ in range(settings.repeat):
        index = rng.randrange(n)
        proof = tree.inclusion_proof(index)
        budget = settings.micro_seconds / 4
        incl.add(1e6 * seconds_per_call(lambda i=index: tree.inclusion_proof(i), budget))
        incl_v.add(
            1e6
            * seconds_per_call(
                lambda i=index, p=proof: merkle.verify_inclusion(leaves[i], i, n, p, root),
                budget,
            )
        )
        cproof = tree.consistency_proof(n // 2)
        cons.add(1e6 * seconds_per_call(lambda: tree.consistency_proof(n // 2), budget))
        cons_v.add(
            1e6
            * seconds_per_call(
                lambda p=cproof: merkle.verify_consistency(n // 2, n, p, old_root, root), budget
            )
        )
    return [appends, incl, incl_v, cons, cons_v]


# -- throwaway databases (also used by the retention section) ------------------------------


@dataclass(frozen=True)
class TempDatabase:
    """A migrated, empty database that exists only for one ``with`` block.

    ``data_dir`` is a fresh directory for the key files a broker keeps beside its data (the
    SQLite file lives there too); ``url`` is what ``Config.database.url`` would hold.
    """

    backend: str
    url: str
    engine: sa.Engine
    data_dir: Path


def available_backends() -> list[str]:
    """SQLite always; PostgreSQL when its server answers (else say it was skipped, and why).

    Checked at run time rather than declared in ``requires`` because a missing server is a
    property of the machine, not of the broker tree, and must not hide the SQLite figures.
    """
    try:
        admin = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        try:
            with admin.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        finally:
            admin.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure means "not here", reported
        url = sa.make_url(PG_ADMIN_URL).render_as_string(hide_password=True)
        print(f"   PostgreSQL skipped: {url} not reachable ({type(exc).__name__})", flush=True)
        return [SQLITE]
    return [SQLITE, POSTGRES]


@contextlib.contextmanager
def temporary_database(backend: str) -> Iterator[TempDatabase]:
    """A migrated database on ``backend``, removed on exit whatever happens inside.

    SQLite lives in a temporary directory; on PostgreSQL a database with a random name is
    created on the server at ``PG_ADMIN_URL`` and dropped with ``WITH (FORCE)``, so a thread
    still holding a connection cannot leave it behind.
    """
    from broker.storage.db import create_engine_for, migrate  # noqa: PLC0415 - optional

    with tempfile.TemporaryDirectory(prefix="bench-db-") as tmp:
        data_dir = Path(tmp)
        if backend == SQLITE:
            url = f"sqlite:///{data_dir / 'broker.db'}"
            engine = create_engine_for(url)
            try:
                migrate(engine)
                yield TempDatabase(backend, url, engine, data_dir)
            finally:
                engine.dispose()
            return
        name = f"bench_{uuid.uuid4().hex[:16]}"
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            try:
                pg_url = sa.make_url(PG_ADMIN_URL).set(database=name)
                url = pg_url.render_as_string(hide_password=False)
                engine = create_engine_for(url)
                try:
                    migrate(engine)
                    yield TempDatabase(backend, url, engine, data_dir)
                finally:
                    engine.dispose()
            finally:
                with admin.connect() as conn:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            admin.dispose()


# -- bulk loading ---------------------------------------------------------------------------


def _bulk_entry(i: int) -> Entry:
    """The ``admin_event`` for key ``k<i>`` at time ``i``, without encoding it (see _TEMPLATE)."""
    from broker.audit.entry import Entry  # noqa: PLC0415 - optional module

    body = {
        "v": 1,
        "kind": "admin.key.created",
        "time_us": i,
        "tenant": "acme",
        "subject": "ops",
        "target": f"k{i}",
        "details": {},
    }
    return Entry(body, _TEMPLATE % (i, i))


def _check_template() -> None:
    """Refuse to load a log the broker could not have written (the entry format moved on)."""
    from broker.audit.entry import admin_event  # noqa: PLC0415 - optional module

    real = admin_event(kind="admin.key.created", time_us=7, tenant="acme", actor="ops", target="k7")
    if _bulk_entry(7) != real:
        raise RuntimeError("the bench's bulk-load entry template no longer matches admin_event")


def _copy_rows(conn: sa.Connection, table: sa.Table, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert ``rows`` (in column order) with the driver's fastest path, as test_million does."""
    columns = ", ".join(c.name for c in table.columns)
    raw = conn.connection.driver_connection
    if raw is None:
        raise RuntimeError("no driver connection to bulk-load through")
    if conn.dialect.name == POSTGRES:
        with raw.cursor() as cursor, cursor.copy(f"COPY {table.name} ({columns}) FROM STDIN") as cp:
            for row in rows:
                cp.write_row(row)
    else:
        marks = ", ".join("?" for _ in table.columns)
        insert = f"INSERT INTO {table.name} ({columns}) VALUES ({marks})"  # noqa: S608 - names from metadata
        raw.executemany(insert, rows)


def bulk_load(engine: sa.Engine, count: int) -> None:
    """Append ``count`` admin entries to an empty log, with every tree node, in big batches.

    Rows and nodes come from ``entry_row`` and ``integrate`` (what ``AuditStore.append`` uses);
    the frontier for the next batch is taken from the nodes just made, so no tree is kept in
    memory.
    """
    from broker.audit.merkle import leaf_hash  # noqa: PLC0415 - optional module
    from broker.audit.store import entry_row, frontier_pairs, integrate  # noqa: PLC0415
    from broker.audit.tables import audit_entries, audit_nodes  # noqa: PLC0415

    _check_template()
    entry_cols = [c.name for c in audit_entries.columns]
    node_cols = [c.name for c in audit_nodes.columns]
    frontier: dict[tuple[int, int], bytes] = {}
    for start in range(0, count, _LOAD_BATCH):
        stop = min(count, start + _LOAD_BATCH)
        batch = [_bulk_entry(i) for i in range(start, stop)]
        hashes = [leaf_hash(e.data) for e in batch]
        nodes = integrate(start, hashes, frontier)
        rows = [
            entry_row(start + k, e, h) for k, (e, h) in enumerate(zip(batch, hashes, strict=True))
        ]
        with engine.begin() as conn:
            _copy_rows(conn, audit_entries, [tuple(r[c] for c in entry_cols) for r in rows])
            _copy_rows(conn, audit_nodes, [tuple(n[c] for c in node_cols) for n in nodes])
        known = dict(frontier)
        for node in nodes:
            level, index, digest = (node[c] for c in ("level", "node_index", "hash"))
            known[(cast(int, level), cast(int, index))] = cast(bytes, digest)
        frontier = {pair: known[pair] for pair in frontier_pairs(stop)}


# -- the durable section --------------------------------------------------------------------


def _time_proofs(db: TempDatabase, settings: Settings, figures: dict[str, Figure]) -> None:
    """Inclusion and consistency proofs from the database, checked, then timed per repeat."""
    from broker.audit.merkle import (  # noqa: PLC0415 - optional module
        leaf_hash,
        verify_consistency,
        verify_inclusion,
    )
    from broker.audit.store import AuditStore  # noqa: PLC0415

    store = AuditStore(db.engine)
    n = store.size()
    if n != settings.merkle_entries:
        raise RuntimeError(f"loaded {n:,} entries, expected {settings.merkle_entries:,}")
    root, old_root = store.root(n), store.root(n // 2)
    verify_consistency(n // 2, n, store.consistency_proof(n // 2, n), old_root, root)
    rng = random.Random(7)  # noqa: S311 - a reproducible choice of leaves, not crypto
    budget = settings.micro_seconds / 4
    for _ in range(settings.repeat):
        index = rng.randrange(n)
        proof = store.inclusion_proof(index, n)
        verify_inclusion(leaf_hash(_bulk_entry(index).data), index, n, proof, root)
        figures["incl"].add(
            1e6 * seconds_per_call(functools.partial(store.inclusion_proof, index, n), budget)
        )
        figures["cons"].add(
            1e6 * seconds_per_call(lambda: store.consistency_proof(n // 2, n), budget)
        )


def _appends_per_second(log: AuditLog, threads: int, settings: Settings) -> float:
    """Durable appends/s of ``threads`` callers appending back to back (after a warm-up).

    Completed appends are counted per thread and read before and after the measured window,
    so the threads' start and stop are outside it.
    """
    counts = [0] * threads
    errors: list[BaseException] = []
    stop = threading.Event()

    def caller(slot: int) -> None:
        try:
            while not stop.is_set():
                log.record_admin(
                    kind="admin.key.created",
                    tenant="acme",
                    actor="bench",
                    target=f"k{slot}-{counts[slot]}",
                )
                counts[slot] += 1
        except BaseException as exc:  # noqa: BLE001 - re-raised in the measuring thread
            errors.append(exc)

    workers = [
        threading.Thread(target=caller, args=(slot,), name=f"bench-append-{slot}", daemon=True)
        for slot in range(threads)
    ]
    for worker in workers:
        worker.start()
    try:
        time.sleep(settings.warmup)
        before, t0 = sum(counts), time.perf_counter()
        time.sleep(settings.duration)
        after, elapsed = sum(counts), time.perf_counter() - t0
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    if errors:
        raise errors[0]
    return (after - before) / elapsed


def open_audit_log(db: TempDatabase) -> AuditLog:
    """An ``AuditLog`` as ``build_audit_log`` makes one: configured batching, keys in data_dir."""
    from broker.audit.keys import TenantKeys, load_or_create_log_signer  # noqa: PLC0415
    from broker.audit.writer import AuditLog  # noqa: PLC0415
    from broker.config import AuditConfig  # noqa: PLC0415

    defaults = AuditConfig()
    return AuditLog(
        db.engine,
        signer=load_or_create_log_signer(db.data_dir, _ORIGIN),
        origin=_ORIGIN,
        tenant_keys=TenantKeys.load_or_create(db.data_dir),
        batch_ms=defaults.batch_ms,
        batch_max=defaults.batch_max,
    )


def run_durable(settings: Settings) -> list[Figure]:
    """Per backend: bulk-load the log, time proofs from the database, then durable appends/s."""
    n = settings.merkle_entries
    thread_counts = sorted({1, settings.concurrency})
    figures: list[Figure] = []
    for backend in available_backends():
        appends = {
            t: Figure(
                f"{backend}: durable appends/s, {t} thread{'s' if t > 1 else ''}",
                "appends/s",
                note=f"AuditLog.record_admin, group commit, on a {n:,}-entry log",
            )
            for t in thread_counts
        }
        proofs = {
            "incl": Figure(f"{backend}: inclusion proof at {n:,} entries, from the db", "µs"),
            "cons": Figure(f"{backend}: consistency proof {n // 2:,} -> {n:,}, from the db", "µs"),
        }
        with temporary_database(backend) as db:
            t0 = time.perf_counter()
            bulk_load(db.engine, n)
            loaded = time.perf_counter() - t0
            print(f"   {backend}: bulk-loaded {n:,} entries in {loaded:.1f} s", flush=True)
            for figure in proofs.values():
                figure.note = f"one query; log bulk-loaded in {loaded:.1f} s"
            _time_proofs(db, settings, proofs)
            log = open_audit_log(db)
            log.start()
            try:
                for _ in range(settings.repeat):
                    for threads in thread_counts:  # interleaved, so drift hits both alike
                        appends[threads].add(_appends_per_second(log, threads, settings))
            finally:
                log.close()
        figures.extend([*appends.values(), *proofs.values()])
    return figures


SECTION = Section(
    key="audit_merkle",
    title="audit log: Merkle core",
    requires=("broker.audit.merkle",),
    run=run_merkle,
)

DURABLE_SECTION = Section(
    key="audit_durable",
    title="audit log: durable appends/s and proofs",
    requires=("broker.audit.store",),
    run=run_durable,
)

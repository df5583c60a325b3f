"""The write turn and the writer's connection: several processes on one SQLite file, WAL deferral.

``broker serve`` may run worker processes on one node, each with its own ``AuditStore`` on the
same database file. They take turns through ``flock`` on a lock file beside the database, and
each keeps its cached tree tip only while the database still ends at the leaf it wrote.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from broker.audit import store as store_module
from broker.audit.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from broker.audit.store import AuditStore
from broker.audit.turn import LOCK_SUFFIX, lock_path
from broker.storage.db import create_engine_for, migrate
from tests.unit.audit.conftest import make_intent

ROUNDS = 30


def _append_rounds(url: str, name: str, start: Any, rounds: int) -> None:
    """One "worker process": wait for the start signal, then append batches of 1 to 4."""
    engine = create_engine_for(url)
    try:
        store = AuditStore(engine)
        start.wait()
        for n in range(rounds):
            store.append([make_intent(call_id=f"{name}-{n}-{i}") for i in range(n % 4 + 1)])
            # Sign now and then, as each worker's checkpointer does.
            if n % 7 == 3:
                store.add_checkpoint(lambda size, root: f"{name} {size} {root.hex()}", n)
    finally:
        engine.dispose()


def _tree(engine: sa.Engine) -> MerkleTree:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT entry FROM audit_entries ORDER BY leaf_index"))
        return MerkleTree(leaf_hash(bytes(r[0])) for r in rows)


@pytest.fixture
def sqlite_file(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    engine = create_engine_for(url)
    migrate(engine)
    engine.dispose()
    return url


def test_two_processes_interleave_appends_into_one_rfc_tree(sqlite_file: str) -> None:
    context = multiprocessing.get_context("spawn")  # no fork of a threaded test process
    start = context.Event()
    workers = [
        context.Process(target=_append_rounds, args=(sqlite_file, name, start, ROUNDS))
        for name in ("a", "b")
    ]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0]

    engine = create_engine_for(sqlite_file)
    try:
        store = AuditStore(engine)
        tree = _tree(engine)
        size = store.size()
        per_worker = sum(n % 4 + 1 for n in range(ROUNDS))
        assert size == tree.size == 2 * per_worker
        with engine.connect() as conn:
            calls = [c for (c,) in conn.execute(sa.text("SELECT call_id FROM audit_entries"))]
        assert sorted(calls) == sorted(
            f"{w}-{n}-{i}" for w in "ab" for n in range(ROUNDS) for i in range(n % 4 + 1)
        )
        root = store.root(size)
        assert root == tree.root()
        for index in range(0, size, 5):
            proof = store.inclusion_proof(index, size)
            verify_inclusion(tree.get_subtree_hash(index, index + 1), index, size, proof, root)
        for checkpoint in store.checkpoints():  # each signed the root of its own size
            assert checkpoint.root_hash == tree.root(checkpoint.size)
            verify_consistency(
                checkpoint.size,
                size,
                store.consistency_proof(checkpoint.size, size),
                checkpoint.root_hash,
                root,
            )
        # A store whose cached tip went stale in between appends soundly on top.
        store.append([make_intent()])
        assert store.root(size + 1) == _tree(engine).root()
    finally:
        engine.dispose()


def test_the_turn_is_a_lock_file_held_while_the_batch_is_written(
    sqlite_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_engine_for(sqlite_file)
    path = lock_path(engine)
    assert path is not None
    assert path.name == "broker.db" + LOCK_SUFFIX
    held: list[bool] = []
    original = store_module._integrate

    def probing(*args: Any) -> Any:
        # Inside the append's transaction: another open file description cannot lock it.
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held.append(True)
        else:
            held.append(False)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        return original(*args)

    monkeypatch.setattr(store_module, "_integrate", probing)
    try:
        store = AuditStore(engine)
        store.append([make_intent()])
        store.append([make_intent()])
        assert held == [True, True]
        fd = os.open(path, os.O_RDWR)  # and released once the batch is committed
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        engine.dispose()


def test_no_lock_file_for_postgres_or_memory() -> None:
    for url in ("sqlite://", "sqlite:///:memory:", "postgresql://u@localhost/db"):
        engine = sa.create_engine(url.replace("postgresql:", "postgresql+psycopg:"))
        assert lock_path(engine) is None
        engine.dispose()


def _wal_frames(engine: sa.Engine) -> int:
    """Frames in the WAL, as a passive checkpoint reports them (after copying them)."""
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()[1])


def _wal_file_frames(database: Path) -> int:
    """How far the WAL file ever reached, in frames (the file is reused, never shrunk)."""
    wal = database.with_name(database.name + "-wal")
    return (wal.stat().st_size - 32) // (4096 + 24)


def test_deferred_wal_checkpoints_leave_the_append_path(sqlite_file: str) -> None:
    engine = create_engine_for(sqlite_file)
    database = Path(engine.url.database or "")
    try:
        store = AuditStore(engine)
        store.defer_wal_checkpoints()
        for _ in range(400):  # SQLite would restart the WAL after 1000 pages on its own
            store.append([make_intent() for _ in range(20)])
            if _wal_file_frames(database) > 1500:
                break
        assert _wal_file_frames(database) > 1500
        store.checkpoint_wal(max_frames=0)  # copies all; the next append restarts the WAL
        store.append([make_intent()])
        assert _wal_frames(engine) < 100
        store.defer_wal_checkpoints(False)  # SQLite checkpoints in the commit again
        for _ in range(150):  # thousands of pages
            store.append([make_intent() for _ in range(20)])
        assert _wal_frames(engine) < 1100
        assert store.root(store.size()) == _tree(engine).root()
    finally:
        engine.dispose()

"""``AuditStore.append_unless``: an administrative event recorded once however many record it.

Every broker process swaps a new policy revision in by itself, and every replica's deletion
scheduler may deliver the same deletion: the check that the log does not record it already and
the append are one transaction under the integrator lock, so racing processes write it once.
Run on SQLite and PostgreSQL; the race is between real processes on one database.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

import sqlalchemy as sa

from broker.audit import store as store_module
from broker.audit.entry import admin_event
from broker.audit.merkle import MerkleTree
from broker.audit.store import AuditStore, Unless
from broker.audit.tables import audit_entries
from broker.audit.writer import AuditLog
from broker.storage.db import create_engine_for
from tests.unit.audit.conftest import make_intent

ACTIVATED = "admin.policy.activated"
DELETED = "admin.retention.deleted"
RACERS = 6


def _event(kind: str, target: str) -> Any:
    return admin_event(kind=kind, time_us=1, tenant="", actor="broker", target=target)


def _targets(engine: sa.Engine, kind: str) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(audit_entries.c.model)
            .where(audit_entries.c.kind == kind)
            .order_by(audit_entries.c.leaf_index)
        )
        return [str(row.model) for row in rows]


def _leaf_hashes(engine: sa.Engine) -> list[bytes]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(audit_entries.c.entry_hash).order_by(audit_entries.c.leaf_index)
        )
        return [bytes(row.entry_hash) for row in rows]


def test_latest_skips_only_the_revision_the_newest_activation_names(engine: sa.Engine) -> None:
    store = AuditStore(engine)
    unless = {rev: Unless(ACTIVATED, rev, latest=True) for rev in ("rev-a", "rev-b")}
    first = store.append_unless(_event(ACTIVATED, "rev-a"), unless["rev-a"])
    assert first is not None and first.leaf_index == 0
    assert store.append_unless(_event(ACTIVATED, "rev-a"), unless["rev-a"]) is None
    store.append([make_intent()])  # other kinds between activations do not matter
    assert store.append_unless(_event(ACTIVATED, "rev-a"), unless["rev-a"]) is None
    assert store.append_unless(_event(ACTIVATED, "rev-b"), unless["rev-b"]) is not None
    back = store.append_unless(_event(ACTIVATED, "rev-a"), unless["rev-a"])  # rolled back to A
    assert back is not None and back.leaf_index == 3
    assert _targets(engine, ACTIVATED) == ["rev-a", "rev-b", "rev-a"]


def test_any_skips_a_target_recorded_at_any_time(engine: sa.Engine) -> None:
    store = AuditStore(engine)
    assert store.append_unless(_event(DELETED, "rec-1"), Unless(DELETED, "rec-1")) is not None
    assert store.append_unless(_event(DELETED, "rec-2"), Unless(DELETED, "rec-2")) is not None
    assert store.append_unless(_event(DELETED, "rec-1"), Unless(DELETED, "rec-1")) is None
    assert _targets(engine, DELETED) == ["rec-1", "rec-2"]


def test_a_skipped_append_leaves_the_tree_and_the_next_append_whole(engine: sa.Engine) -> None:
    """The skip rolls back after reading the frontier: nothing cached or stored moves."""
    store = AuditStore(engine)
    store.append([make_intent() for _ in range(5)])
    store.append_unless(_event(DELETED, "rec-1"), Unless(DELETED, "rec-1"))
    assert store.append_unless(_event(DELETED, "rec-1"), Unless(DELETED, "rec-1")) is None
    assert store.size() == 6
    (receipt,) = store.append([make_intent()])
    assert receipt.leaf_index == 6
    assert store.root(7) == MerkleTree(_leaf_hashes(engine)).root()


def test_the_writer_records_once_and_says_so(audit_log: AuditLog, engine: sa.Engine) -> None:
    def activate(revision: str) -> object:
        return audit_log.record_admin_once(
            kind=ACTIVATED, tenant="", actor="broker", target=revision, latest=True
        )

    recorded = activate("rev-a")
    assert recorded is not None
    assert activate("rev-a") is None
    assert _targets(engine, ACTIVATED) == ["rev-a"]
    assert _leaf_hashes(engine) == [recorded.entry_hash]


def _race(url: str, name: str, start: Any, results: Any) -> None:
    """One "broker process": wait for the others, then record the same two events."""
    engine = create_engine_for(url)
    try:
        store = AuditStore(engine)
        start.wait()
        won = []
        for kind, target, latest in ((ACTIVATED, "rev-x", True), (DELETED, "rec-9", False)):
            receipt = store.append_unless(_event(kind, target), Unless(kind, target, latest))
            won.append(receipt is not None)
            store.append([make_intent(call_id=f"{name}-{kind}")])  # ordinary traffic between
        results.put((name, won))
    finally:
        engine.dispose()


def test_processes_racing_to_record_the_same_event_write_it_once(
    engine: sa.Engine, database_url: str
) -> None:
    context = multiprocessing.get_context("spawn")  # no fork of a threaded test process
    start = context.Event()
    results = context.Queue()
    racers = [
        context.Process(target=_race, args=(database_url, f"p{n}", start, results))
        for n in range(RACERS)
    ]
    for racer in racers:
        racer.start()
    start.set()
    for racer in racers:
        racer.join(timeout=120)
        assert racer.exitcode == 0
    outcomes = dict(results.get(timeout=10) for _ in racers)
    assert sum(won[0] for won in outcomes.values()) == 1  # one process wrote the activation
    assert sum(won[1] for won in outcomes.values()) == 1  # and one the deletion
    assert _targets(engine, ACTIVATED) == ["rev-x"]
    assert _targets(engine, DELETED) == ["rec-9"]
    hashes = _leaf_hashes(engine)
    assert len(hashes) == 2 + 2 * RACERS
    assert AuditStore(engine).root(len(hashes)) == MerkleTree(hashes).root()


def test_the_newest_activation_is_found_through_the_kind_index_after_analyze(
    engine: sa.Engine,
) -> None:
    """Checked under the write lock: it must not walk the log (the planner would, after ANALYZE,
    answer max(leaf_index) from the primary key backwards, reading every entry)."""
    store = AuditStore(engine)
    store.append_unless(_event(ACTIVATED, "rev-a"), Unless(ACTIVATED, "rev-a", latest=True))
    for batch in range(20):
        store.append([make_intent(call_id=f"plan-{batch}-{i}") for i in range(500)])
    postgres = engine.dialect.name == "postgresql"
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.commit()
        if postgres:
            sql = store_module._LATEST_RECORDED_PG.replace("%s", "'admin.policy.activated'")
            plan = "\n".join(str(r[0]) for r in conn.exec_driver_sql(f"EXPLAIN {sql}"))
            assert "Backward" not in plan, plan
        else:
            sql = store_module._LATEST_RECORDED_SQLITE.replace("?", "'admin.policy.activated'")
            plan = "\n".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
        assert "ix_audit_entries_kind_model" in plan, plan
    assert store.append_unless(_event(ACTIVATED, "rev-a"), Unless(ACTIVATED, "rev-a", True)) is None

"""``AuditFilter(without_outcome=True)``: the calls whose result the log does not know.

A call's intent is durable before the request leaves and its outcome before the answer; a
serving process that dies in between leaves the intent alone. Officers find those calls with
this filter (``broker audit query --without-outcome``). On SQLite and PostgreSQL.
"""

from __future__ import annotations

import json

import pytest

from broker.audit.entry import Entry, call_outcome
from broker.audit.export import build_export
from broker.audit.query import AuditFilter, query_page
from broker.audit.writer import AuditLog
from tests.unit.audit.conftest import make_intent


def _outcome(call_id: str, tenant: str, intent_index: int) -> Entry:
    return call_outcome(
        time_us=10,
        call_id=call_id,
        tenant=tenant,
        subject=f"{tenant}-svc",
        model="v/m@1",
        vendor="v",
        intent_index=intent_index,
        status="OK",
        latency_us=5,
        response_digest="hmac-sha256:" + "00" * 32,
    )


@pytest.fixture
def calls(audit_log: AuditLog) -> AuditLog:
    """c0, c2: intent and outcome; c1: intent only; c4: intent, a checkpoint, then its outcome;
    c3: intent only, after the checkpoint."""
    for tenant, call_id in (("acme", "c0"), ("acme", "c1"), ("globex", "c2")):
        intent = audit_log.append(make_intent(tenant=tenant, call_id=call_id))
        if call_id != "c1":
            audit_log.append(_outcome(call_id, tenant, intent.leaf_index))
    late = audit_log.append(make_intent(tenant="globex", call_id="c4"))
    audit_log.checkpoint_now()
    audit_log.append(_outcome("c4", "globex", late.leaf_index))
    audit_log.append(make_intent(tenant="acme", call_id="c3"))
    return audit_log


def _calls(log: AuditLog, flt: AuditFilter) -> list[str]:
    rows, _ = query_page(log.store.engine, flt, page_size=100)
    assert {row.kind for row in rows} <= {"call.intent"}
    return [row.call_id for row in rows]


def test_only_intents_without_an_outcome_of_their_call(calls: AuditLog) -> None:
    assert _calls(calls, AuditFilter(without_outcome=True)) == ["c1", "c3"]


def test_the_other_filters_apply_to_those_intents(calls: AuditLog) -> None:
    assert _calls(calls, AuditFilter(without_outcome=True, tenant="acme")) == ["c1", "c3"]
    assert _calls(calls, AuditFilter(without_outcome=True, tenant="globex")) == []
    assert _calls(calls, AuditFilter(without_outcome=True, call_id="c3")) == ["c3"]
    assert _calls(calls, AuditFilter(without_outcome=True, kind="call.outcome")) == []


def test_pages_hold_across_the_filter(calls: AuditLog) -> None:
    engine = calls.store.engine
    first, cursor = query_page(engine, AuditFilter(without_outcome=True), page_size=1)
    second, last = query_page(engine, AuditFilter(without_outcome=True), page_size=1, cursor=cursor)
    assert [r.call_id for r in first + second] == ["c1", "c3"]
    assert last == ""


def test_an_export_pinned_to_a_checkpoint_judges_by_the_outcomes_under_it(
    calls: AuditLog,
) -> None:
    """c4's outcome came after the checkpoint the export is pinned to: in that export, which
    proves the log as it stood then, c4 is a call without an outcome."""
    manifest, items = build_export(
        calls.store.engine, calls.store, calls.verifier, AuditFilter(without_outcome=True)
    )
    assert manifest.filters == {"without_outcome": True}
    assert not manifest.complete
    exported = [json.loads(item.entry) for item in items]
    assert [(e["kind"], e["call_id"]) for e in exported] == [
        ("call.intent", "c1"),
        ("call.intent", "c4"),
    ]

"""Console sessions (expiry, CSRF) and the pure view computations."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from google.protobuf.timestamp_pb2 import Timestamp

from broker._proto.broker.v1 import audit_pb2, retention_pb2
from broker.auth.principal import Principal, Role
from broker.console import views
from broker.console.sessions import SessionStore


def _principal(expires_at: float = 10_000.0) -> Principal:
    return Principal("acme", "olga", frozenset({Role.COMPLIANCE}), "i", expires_at)


def test_a_session_ends_at_its_ttl_or_at_the_token_expiry_whichever_is_first() -> None:
    now = [1_000.0]
    store = SessionStore(60, clock=lambda: now[0])
    session = store.create("tok", _principal())
    short = store.create("tok2", _principal(expires_at=1_030.0))
    assert store.get(session.session_id) == session
    now[0] = 1_030.0
    assert store.get(short.session_id) is None
    assert store.get(session.session_id) is not None
    now[0] = 1_060.0
    assert store.get(session.session_id) is None
    assert store.get("") is None
    assert store.get("forged") is None


def test_csrf_tokens_are_per_session_and_required() -> None:
    store = SessionStore(60)
    one, two = store.create("a", _principal()), store.create("b", _principal())
    assert one.csrf_ok(one.csrf_token)
    assert not one.csrf_ok(two.csrf_token)
    assert not one.csrf_ok(None)
    assert not one.csrf_ok("")
    store.delete(one.session_id)
    assert store.get(one.session_id) is None


def _entry(
    leaf: int, kind: str, body: dict[str, object], **columns: object
) -> audit_pb2.AuditEntry:
    return audit_pb2.AuditEntry(leaf_index=leaf, kind=kind, entry=orjson.dumps(body), **columns)  # type: ignore[arg-type]


def _ts(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def test_record_states() -> None:
    now = datetime(2026, 12, 7, tzinfo=UTC)
    records = [
        retention_pb2.RetainedRecord(record_id="held", held=True, due_time=_ts(now)),
        retention_pb2.RetainedRecord(
            record_id="due", due_time=_ts(datetime(2026, 12, 1, tzinfo=UTC))
        ),
        retention_pb2.RetainedRecord(
            record_id="kept", due_time=_ts(datetime(2027, 1, 1, tzinfo=UTC))
        ),
    ]
    receipt = _entry(
        9,
        "admin.retention.deleted",
        {"details": {"done_time": "2026-12-02", "reason": "ttl", "key_id": "k"}},
    )
    states = views.record_states(
        ["held", "due", "kept", "gone", "lost"], records, {"gone": receipt}, now
    )
    assert [(s.record_id, s.state) for s in states] == [
        ("held", "held"),
        ("due", "due"),
        ("kept", "retained"),
        ("gone", "deleted"),
        ("lost", "unknown"),
    ]
    assert states[3].receipt_leaf == 9


def test_chart_data() -> None:
    def group(*keys: str, count: int) -> audit_pb2.AggregateGroup:
        return audit_pb2.AggregateGroup(keys=keys, count=count)

    counts = audit_pb2.AggregateResponse(
        entries=4,
        calls_by_day_outcome=[
            group("2026-12-07", "OK", count=1),
            group("2026-12-07", "PERMISSION_DENIED", count=1),
        ],
        calls_by_tenant_model=[group("acme", "v/m@1", count=2)],
        failures_by_reason=[group("PolicyDenied", count=1)],
        fields_by_label_action=[group("pii.email", "redact", count=1)],
        deletions_done_by_day=[group("2026-12-07", count=1)],
        deletions_due_by_day=[group("2026-12-07", count=1), group("2026-12-09", count=3)],
    )
    data = views.chart_data(counts)
    assert data["calls_by_outcome"] == {
        "labels": ["2026-12-07"],
        "series": [{"name": "OK", "values": [1]}, {"name": "PERMISSION_DENIED", "values": [1]}],
    }
    assert data["actions_by_label"]["series"] == [{"name": "redact", "values": [1]}]
    assert data["denials_by_reason"] == {"labels": ["PolicyDenied"], "values": [1]}
    assert data["deletions"] == {
        "labels": ["2026-12-07", "2026-12-09"],
        "series": [{"name": "done", "values": [1, 0]}, {"name": "due", "values": [1, 3]}],
    }
    assert data["calls_by_tenant_model"] == {"labels": ["acme \N{MIDDLE DOT} v/m@1"], "values": [2]}
    assert data["entries"] == 4


def test_decision_rows_group_each_fields_entities_with_their_counts() -> None:
    fields = [
        {"path": "/a", "labels": ["pii.email"], "action": "redact"},
        {"path": "/a", "labels": ["pii.email"], "action": "entity.redact", "count": 1},
        {"path": "/n", "labels": ["pii.phone"], "action": "entity.mask", "count": 2},
        {"path": "/n", "labels": ["free_text"], "action": "allow"},
        {"path": "/n", "labels": ["pii.email"], "action": "entity.redact", "count": 3},
        {"path": "/old", "labels": ["pii.email"], "action": "entity.redact"},  # before counts
    ]
    rows = {row.path: row for row in views.decision_rows(fields)}
    assert (rows["/a"].action, rows["/a"].entities) == (
        "redact",
        [views.EntityCount("pii.email", "redact", 1)],
    )
    assert rows["/n"].action == "allow" and rows["/n"].labels == ["free_text"]
    assert [(e.label, e.count) for e in rows["/n"].entities] == [("pii.phone", 2), ("pii.email", 3)]
    assert rows["/old"].entities == [views.EntityCount("pii.email", "redact", None)]
    assert views.entity_counts(fields[:5]) == [("pii.email", "redact", 4), ("pii.phone", "mask", 2)]
    assert ("pii.email", "redact", None) in views.entity_counts(fields)
    # Entity rows are not fields: the fields-per-label table counts only field rows.
    assert views.label_counts(fields) == [("free_text", "allow", 1), ("pii.email", "redact", 1)]

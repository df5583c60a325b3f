"""Chart counts computed by the database (SQLite and PostgreSQL), filtered like queries."""

from __future__ import annotations

import pytest

from broker.audit.aggregate import DAY_US, Group, aggregate
from broker.audit.entry import admin_event, call_outcome
from broker.audit.query import AuditFilter
from broker.audit.writer import AuditLog
from tests.unit.audit.conftest import make_intent

DAY0 = 20_000 * DAY_US  # 2024-10-04


def _outcome(tenant: str, status: str, time_us: int, error_class: str = "") -> object:
    return call_outcome(
        time_us=time_us,
        call_id="c",
        tenant=tenant,
        subject=f"{tenant}-svc",
        model="v/m@1" if tenant == "acme" else "v/other@2",
        vendor="v",
        intent_index=None,
        status=status,
        latency_us=1,
        response_digest="",
        error_class=error_class,
    )


@pytest.fixture
def filled(audit_log: AuditLog) -> AuditLog:
    for tenant in ("acme", "acme", "globex"):
        audit_log.append(make_intent(tenant=tenant, time_us=DAY0))
    audit_log.append(_outcome("acme", "OK", DAY0 + 5))
    audit_log.append(_outcome("acme", "OK", DAY0 + DAY_US + 5))
    audit_log.append(_outcome("acme", "PERMISSION_DENIED", DAY0 + DAY_US, "PolicyDenied"))
    audit_log.append(_outcome("globex", "UNAVAILABLE", DAY0 + 7))
    audit_log.append(
        admin_event(
            kind="admin.retention.deleted",
            time_us=DAY0 + DAY_US,
            tenant="acme",
            actor="scheduler",
            target="rec-1",
            details={"reason": "ttl"},
        )
    )
    audit_log.checkpoint_now()
    return audit_log


def test_every_chart_is_counted_by_the_database(filled: AuditLog) -> None:
    result = aggregate(filled.store.engine, AuditFilter())
    assert result.entries == 8
    assert sorted(result.calls_by_day_outcome, key=lambda g: g.keys) == [
        Group(("2024-10-04", "OK"), 1),
        Group(("2024-10-04", "UNAVAILABLE"), 1),
        Group(("2024-10-05", "OK"), 1),
        Group(("2024-10-05", "PERMISSION_DENIED"), 1),
    ]
    assert result.calls_by_tenant_model == [
        Group(("acme", "v/m@1"), 3),
        Group(("globex", "v/other@2"), 1),
    ]
    # The error class where there is one, else the status.
    assert result.failures_by_reason == [Group(("PolicyDenied",), 1), Group(("UNAVAILABLE",), 1)]
    assert result.fields_by_label_action == [
        Group(("(none)", "allow"), 3),
        Group(("pii.email", "redact"), 3),
    ]
    assert result.deletions_done_by_day == [Group(("2024-10-05",), 1)]


def test_the_filter_applies_to_every_chart(filled: AuditLog) -> None:
    acme = aggregate(filled.store.engine, AuditFilter(tenant="acme"))
    assert acme.entries == 6
    assert acme.calls_by_tenant_model == [Group(("acme", "v/m@1"), 3)]
    assert acme.failures_by_reason == [Group(("PolicyDenied",), 1)]
    assert acme.fields_by_label_action == [
        Group(("(none)", "allow"), 2),
        Group(("pii.email", "redact"), 2),
    ]
    day_two = aggregate(
        filled.store.engine, AuditFilter(time_from_us=DAY0 + DAY_US, time_to_us=DAY0 + 2 * DAY_US)
    )
    assert {g.keys[0] for g in day_two.calls_by_day_outcome} == {"2024-10-05"}
    assert day_two.fields_by_label_action == []
    nobody = aggregate(filled.store.engine, AuditFilter(tenant="nobody"))
    assert nobody.entries == 0 and nobody.calls_by_day_outcome == []

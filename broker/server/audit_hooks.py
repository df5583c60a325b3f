"""Adapters that put administrative events on the audit record.

Registry changes, policy activations, retention actions (hold, release, erase), scheduled
deletions and entries viewed (``Audit/GetEntry``) each become one ``admin.*`` entry naming who
did what to which target. They are plain functions over ``AuditLog.record_admin`` so that each
component stays free of audit code.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import sqlalchemy as sa

from broker.audit.query import StoredEntry
from broker.audit.tables import audit_entries
from broker.audit.writer import AuditLog
from broker.auth.principal import Principal
from broker.logging import get_logger
from broker.registry.model import ModelVersion
from broker.retention.model import DeletionHook, DeletionReason
from broker.runtimes.sandbox.pool import Violation, ViolationHook
from broker.server.audit_service import EntryViewHook
from broker.server.context import current_principal
from broker.server.registry_service import ChangeHook, ChangeKind
from broker.server.retention_service import RetentionEvent, RetentionEventHook

_log = get_logger(__name__)
DELETED = "admin.retention.deleted"
_PAST_TENSE = {"hold": "held", "release": "released", "erase": "erased"}


def registry_changes(log: AuditLog) -> ChangeHook:
    """``admin.model.registered|updated|retired`` with the vendor's subject as actor."""

    def record(kind: ChangeKind, model: ModelVersion) -> None:
        log.record_admin(
            kind=f"admin.model.{kind}",
            tenant=model.vendor,
            actor=current_principal().subject,
            target=model.ref,
            details={"status": model.status.value, "runtime": model.runtime.value},
        )

    return record


def policy_activations(log: AuditLog) -> Callable[[str, str | None], None]:
    """``admin.policy.activated`` whenever a new policy revision is swapped in."""

    def record(revision: str, previous: str | None) -> None:
        log.record_admin(
            kind="admin.policy.activated",
            tenant="",
            actor="broker",
            target=revision,
            details={"previous": previous or ""},
        )

    return record


def retention_events(log: AuditLog) -> RetentionEventHook:
    """``admin.retention.held|released|erased`` with the compliance officer as actor."""

    def record(event: RetentionEvent) -> None:
        log.record_admin(
            kind=f"admin.retention.{_PAST_TENSE[event.action]}",
            tenant=event.tenant,
            actor=f"{event.actor_tenant}/{event.actor_subject}",
            target=event.record_id or event.subject or event.tenant,
            details={"reason": event.reason, "count": str(event.count)},
        )

    return record


def entry_views(log: AuditLog) -> EntryViewHook:
    """``admin.audit.viewed``: who looked at which entry (the console's entry page).

    The entry goes on the viewed entry's tenant, so that tenant's compliance officers see
    who read their trail; the actor names the viewer's own tenant too (an admin may be another).
    """

    def record(viewer: Principal, entry: StoredEntry) -> None:
        log.record_admin(
            kind="admin.audit.viewed",
            tenant=entry.tenant,
            actor=f"{viewer.tenant}/{viewer.subject}",
            target=str(entry.leaf_index),
            details={"entry_kind": entry.kind, "call_id": entry.call_id},
        )

    return record


def sandbox_violations(log: AuditLog) -> ViolationHook:
    """``admin.sandbox.violation``: a limit hit, a seccomp kill, or a tampered environment."""

    def record(violation: Violation) -> None:
        log.record_admin(
            kind="admin.sandbox.violation",
            tenant=violation.tenant,
            actor="sandbox",
            target=violation.model or violation.package,
            details={"reason": violation.reason, "package": violation.package},
        )

    return record


def deletions(log: AuditLog) -> DeletionHook:
    """``admin.retention.deleted``: record id, due time, time done, key destroyed, reason.

    The scheduler delivers a deletion at least once; an entry already on the log for the same
    record is not written twice.
    """

    def record(
        record_id: str, due: datetime, done: datetime, key_id: str, reason: DeletionReason
    ) -> None:
        with log.store.engine.connect() as conn:
            seen = conn.execute(
                sa.select(audit_entries.c.leaf_index)
                .where(audit_entries.c.kind == DELETED, audit_entries.c.model == record_id)
                .limit(1)
            ).first()
        if seen is not None:
            _log.info("deletion_already_audited", record_id=record_id)
            return
        log.record_admin(
            kind=DELETED,
            tenant=_tenant_of(key_id),
            actor="retention-scheduler" if reason.value == "ttl" else "erasure",
            target=record_id,
            details={
                "due_time": due.isoformat(),
                "done_time": done.isoformat(),
                "key_id": key_id,
                "reason": reason.value,
            },
        )

    return record


def _tenant_of(key_id: str) -> str:
    """``dek/<record>@kek/<tenant>/v<n>`` -> ``<tenant>`` ("" if the id has another shape)."""
    _, _, kek = key_id.partition("@kek/")
    tenant, _, _ = kek.rpartition("/")
    return tenant

"""Adapters that put administrative events on the audit record.

Registry changes, policy activations, retention actions (hold, release, erase), scheduled
deletions and entries viewed (``Audit/GetEntry``) each become one ``admin.*`` entry naming who
did what to which target. They are plain functions over ``AuditLog.record_admin`` so that each
component stays free of audit code.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from broker.audit.query import StoredEntry
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
ACTIVATED = "admin.policy.activated"
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
    """``admin.policy.activated`` whenever a policy revision other than the last one recorded
    is swapped in.

    Every broker process swaps the revision in by itself (each worker of a node and each replica,
    at start, on SIGHUP, on an edit of the bundle, on adopting the cluster's), so the entry is
    written only if the log's newest activation names another revision: one activation is one
    entry however many processes make it, and a restart on the same revision adds none.
    """

    def record(revision: str, previous: str | None) -> None:
        receipt = log.record_admin_once(
            kind=ACTIVATED,
            tenant="",
            actor="broker",
            target=revision,
            details={"previous": previous or ""},
            latest=True,
        )
        if receipt is None:
            _log.info("policy_activation_already_audited", revision=revision)

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

    The scheduler delivers a deletion at least once (and several replicas may deliver the same
    one): an entry already on the log for the same record is not written twice, checked in the
    append's own transaction.
    """

    def record(
        record_id: str, due: datetime, done: datetime, key_id: str, reason: DeletionReason
    ) -> None:
        receipt = log.record_admin_once(
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
        if receipt is None:
            _log.info("deletion_already_audited", record_id=record_id)

    return record


def _tenant_of(key_id: str) -> str:
    """``dek/<record>@kek/<tenant>/v<n>`` -> ``<tenant>`` ("" if the id has another shape)."""
    _, _, kek = key_id.partition("@kek/")
    tenant, _, _ = kek.rpartition("/")
    return tenant

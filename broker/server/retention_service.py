"""``broker.v1.Retention``: buyers read their retained records, compliance manages them.

The servicer translates and delegates to :class:`~broker.retention.records.RetentionStore`
and :class:`~broker.retention.scheduler.Deleter`. It decides only who may act on which tenant:

- ``GetRecord``: ``buyer``, own tenant only. Payloads are the most sensitive thing retention
  holds, so neither ``compliance`` nor ``admin`` may read them through the API.
- ``ListRecords``, ``Hold``, ``Release``, ``Erase``: ``compliance`` for its own tenant,
  ``admin`` for any tenant.

A record of another tenant gets NotFound with exactly the message a missing record gets, so
nobody can probe which record ids exist. Naming another *tenant* (list, hold, erase) without
``admin`` gets PermissionDenied instead: that answer does not depend on what exists.

Holds, releases and erasures are logged with who ordered them and passed to ``on_event`` (the
lead wires it to the audit log). Errors are ``BrokerError`` subclasses; the interceptor maps them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from broker._proto.broker.v1 import retention_pb2, retention_pb2_grpc
from broker.auth.principal import Principal, Role, is_valid_tenant, require_role
from broker.errors import InvalidArgument, NotFound, PermissionDenied
from broker.logging import get_logger
from broker.retention.model import PayloadKind, RecordInfo
from broker.retention.records import RetentionStore, not_found
from broker.retention.scheduler import Deleter
from broker.server.context import current_principal

_log = get_logger(__name__)

_MANAGERS: Final = (Role.COMPLIANCE, Role.ADMIN)
_ALL_TENANTS: Final = "*"
_MAX_REASON: Final = 1024
_KINDS: Final = {
    PayloadKind.REQUEST: retention_pb2.PAYLOAD_KIND_REQUEST,
    PayloadKind.RESPONSE: retention_pb2.PAYLOAD_KIND_RESPONSE,
}


@dataclass(frozen=True, slots=True)
class RetentionEvent:
    """A compliance action, for the audit log: who did what to which record or tenant."""

    action: Literal["hold", "release", "erase"]
    tenant: str
    record_id: str
    subject: str
    reason: str
    actor_tenant: str
    actor_subject: str
    count: int


RetentionEventHook = Callable[[RetentionEvent], None]


class RetentionServicer(retention_pb2_grpc.RetentionServicer):
    """The Retention service over a store and a deleter."""

    def __init__(
        self,
        store: RetentionStore,
        deleter: Deleter,
        *,
        on_event: RetentionEventHook | None = None,
    ) -> None:
        self._store = store
        self._deleter = deleter
        self._on_event = on_event

    def GetRecord(  # noqa: N802 - the proto fixes gRPC method names
        self, request: retention_pb2.GetRecordRequest, context: grpc.ServicerContext
    ) -> retention_pb2.GetRecordResponse:
        """One record of the caller's tenant, decrypted."""
        principal = current_principal()
        require_role(principal, Role.BUYER)
        record_id = _record_id(request.record_id)
        found = self._store.get(record_id, tenant=principal.tenant)
        return retention_pb2.GetRecordResponse(
            record=record_to_proto(found.info), payload=found.payload
        )

    def ListRecords(  # noqa: N802 - the proto fixes gRPC method names
        self, request: retention_pb2.ListRecordsRequest, context: grpc.ServicerContext
    ) -> retention_pb2.ListRecordsResponse:
        """One page of record metadata, pending deletions included."""
        principal = _manager()
        tenant: str | None
        if request.tenant == _ALL_TENANTS:
            if not principal.has_role(Role.ADMIN):
                raise PermissionDenied("only an admin may list every tenant's records")
            tenant = None
        else:
            tenant = _tenant(principal, request.tenant, "list")
        records, token = self._store.list(
            tenant=tenant,
            subject=request.subject,
            call_id=request.call_id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return retention_pb2.ListRecordsResponse(
            records=[record_to_proto(info) for info in records], next_page_token=token
        )

    def Hold(  # noqa: N802 - the proto fixes gRPC method names
        self, request: retention_pb2.HoldRequest, context: grpc.ServicerContext
    ) -> retention_pb2.HoldResponse:
        """Place a legal hold on a record or a tenant."""
        record, changed = self._set_hold(request.target, request.reason, held=True)
        return retention_pb2.HoldResponse(record=record, changed=changed)

    def Release(  # noqa: N802 - the proto fixes gRPC method names
        self, request: retention_pb2.ReleaseRequest, context: grpc.ServicerContext
    ) -> retention_pb2.ReleaseResponse:
        """Lift a legal hold; overdue records go at the next scheduler run."""
        record, changed = self._set_hold(request.target, request.reason, held=False)
        return retention_pb2.ReleaseResponse(record=record, changed=changed)

    def Erase(  # noqa: N802 - the proto fixes gRPC method names
        self, request: retention_pb2.EraseRequest, context: grpc.ServicerContext
    ) -> retention_pb2.EraseResponse:
        """Destroy a tenant's (or one subject's) unheld records now."""
        principal = _manager()
        tenant = _tenant(principal, request.tenant, "erase")
        reason = _reason(request.reason)
        result = self._deleter.erase(
            tenant, subject=request.subject or None, now=self._store.clock()
        )
        self._record(
            principal,
            "erase",
            tenant=tenant,
            subject=request.subject,
            reason=reason,
            count=result.erased,
        )
        return retention_pb2.EraseResponse(
            records_erased=result.erased,
            records_held=result.held,
            keys_destroyed=result.keys_destroyed,
        )

    def _set_hold(
        self, target: retention_pb2.HoldTarget, reason_text: str, *, held: bool
    ) -> tuple[retention_pb2.RetainedRecord | None, bool]:
        principal = _manager()
        reason = _reason(reason_text)
        action: Literal["hold", "release"] = "hold" if held else "release"
        which = target.WhichOneof("target")
        if which == "record_id":
            record_id = _record_id(target.record_id)
            scope = None if principal.has_role(Role.ADMIN) else principal.tenant
            info = self._store.set_record_hold(record_id, tenant=scope, held=held)
            self._record(
                principal, action, tenant=info.tenant, record_id=record_id, reason=reason, count=1
            )
            return record_to_proto(info), True
        if which == "tenant":
            tenant = _tenant(principal, target.tenant, action)
            changed = self._store.set_tenant_hold(tenant, held=held, reason=reason)
            self._record(principal, action, tenant=tenant, reason=reason, count=int(changed))
            return None, changed
        raise InvalidArgument("target must name a record_id or a tenant")

    def _record(
        self,
        principal: Principal,
        action: Literal["hold", "release", "erase"],
        *,
        tenant: str,
        record_id: str = "",
        subject: str = "",
        reason: str,
        count: int,
    ) -> None:
        event = RetentionEvent(
            action=action,
            tenant=tenant,
            record_id=record_id,
            subject=subject,
            reason=reason,
            actor_tenant=principal.tenant,
            actor_subject=principal.subject,
            count=count,
        )
        _log.info(
            "retention_" + action,
            tenant=tenant,
            record_id=record_id or None,
            by_tenant=principal.tenant,
            by_subject=principal.subject,
            count=count,
        )
        if self._on_event is not None:
            self._on_event(event)


def record_to_proto(info: RecordInfo) -> retention_pb2.RetainedRecord:
    """Metadata of one record as its protobuf message."""
    create_time, due_time = Timestamp(), Timestamp()
    create_time.FromDatetime(info.create_time)
    due_time.FromDatetime(info.due_time)
    return retention_pb2.RetainedRecord(
        record_id=info.record_id,
        tenant=info.tenant,
        subject=info.subject,
        call_id=info.call_id,
        model=info.model,
        kind=_KINDS[info.kind],
        create_time=create_time,
        due_time=due_time,
        held=info.held,
        tenant_held=info.tenant_held,
        key_id=info.key_id,
        size_bytes=info.size_bytes,
    )


def _manager() -> Principal:
    principal = current_principal()
    require_role(principal, *_MANAGERS)
    return principal


def _tenant(principal: Principal, requested: str, verb: str) -> str:
    """The tenant to act on: the caller's own unless an admin names another."""
    if not requested or requested == principal.tenant:
        return principal.tenant
    if not principal.has_role(Role.ADMIN):
        raise PermissionDenied(f"only an admin may {verb} another tenant's records")
    if not is_valid_tenant(requested):
        raise InvalidArgument("tenant must match [A-Za-z0-9._-]{1,128}")
    return requested


def _record_id(value: str) -> str:
    """A record id in canonical UUID form; anything else cannot exist, so it is NotFound."""
    if not value:
        raise InvalidArgument("record_id is required")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise NotFound(not_found(value[:64])) from None


def _reason(value: str) -> str:
    if len(value) > _MAX_REASON:
        raise InvalidArgument(f"reason must be at most {_MAX_REASON} characters")
    return value

"""RetentionServicer called directly, with the principal set as the auth interceptor would."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import grpc
import pytest

from broker._proto.broker.v1 import retention_pb2
from broker.auth.principal import Principal, Role
from broker.errors import InvalidArgument, NotFound, PermissionDenied
from broker.retention.records import RetentionStore
from broker.retention.scheduler import Deleter
from broker.server.context import principal_var
from broker.server.retention_service import RetentionEvent, RetentionServicer

CONTEXT = cast(grpc.ServicerContext, object())


@contextmanager
def acting_as(tenant: str, *roles: Role) -> Iterator[None]:
    principal = Principal(
        tenant=tenant,
        subject=f"svc@{tenant}",
        roles=frozenset(roles),
        issuer="https://issuer.test",
        expires_at=0.0,
    )
    token = principal_var().set(principal)
    try:
        yield
    finally:
        principal_var().reset(token)


@pytest.fixture
def events() -> list[RetentionEvent]:
    return []


@pytest.fixture
def servicer(
    store: RetentionStore, deleter: Deleter, events: list[RetentionEvent]
) -> RetentionServicer:
    return RetentionServicer(store, deleter, on_event=events.append)


def _keep(store: RetentionStore, tenant: str = "acme", subject: str = "alice") -> str:
    (info,) = store.retain(
        tenant=tenant, subject=subject, call_id="c", model="v/m@1", request=b"{}", request_ttl_s=60
    )
    return info.record_id


def test_buyer_reads_its_own_record(servicer: RetentionServicer, store: RetentionStore) -> None:
    record_id = _keep(store)
    with acting_as("acme", Role.BUYER):
        got = servicer.GetRecord(retention_pb2.GetRecordRequest(record_id=record_id), CONTEXT)
    assert got.payload == b"{}"
    assert got.record.kind == retention_pb2.PAYLOAD_KIND_REQUEST
    assert got.record.key_id == "kek/acme/v1"


def test_another_tenants_record_is_not_found(
    servicer: RetentionServicer, store: RetentionStore
) -> None:
    record_id = _keep(store)
    with acting_as("globex", Role.BUYER), pytest.raises(NotFound) as theirs:
        servicer.GetRecord(retention_pb2.GetRecordRequest(record_id=record_id), CONTEXT)
    absent = "6f1c1a52-0c5b-4bde-9d0e-1a2b3c4d5e6f"
    with acting_as("globex", Role.BUYER), pytest.raises(NotFound) as missing:
        servicer.GetRecord(retention_pb2.GetRecordRequest(record_id=absent), CONTEXT)
    assert theirs.value.message.replace(record_id, "X") == missing.value.message.replace(
        absent, "X"
    )


def test_payloads_are_for_buyers_only(servicer: RetentionServicer, store: RetentionStore) -> None:
    record_id = _keep(store)
    for role in (Role.COMPLIANCE, Role.ADMIN):
        with acting_as("acme", role), pytest.raises(PermissionDenied):
            servicer.GetRecord(retention_pb2.GetRecordRequest(record_id=record_id), CONTEXT)


def test_compliance_lists_its_tenant_admin_lists_all(
    servicer: RetentionServicer, store: RetentionStore
) -> None:
    _keep(store)
    _keep(store, tenant="globex")
    with acting_as("acme", Role.COMPLIANCE):
        mine = servicer.ListRecords(retention_pb2.ListRecordsRequest(), CONTEXT)
        with pytest.raises(PermissionDenied):
            servicer.ListRecords(retention_pb2.ListRecordsRequest(tenant="globex"), CONTEXT)
        with pytest.raises(PermissionDenied):
            servicer.ListRecords(retention_pb2.ListRecordsRequest(tenant="*"), CONTEXT)
    assert [r.tenant for r in mine.records] == ["acme"]
    with acting_as("ops", Role.ADMIN):
        everything = servicer.ListRecords(retention_pb2.ListRecordsRequest(tenant="*"), CONTEXT)
    assert sorted(r.tenant for r in everything.records) == ["acme", "globex"]
    with acting_as("acme", Role.BUYER), pytest.raises(PermissionDenied):
        servicer.ListRecords(retention_pb2.ListRecordsRequest(), CONTEXT)


def test_hold_and_release_a_record_and_a_tenant(
    servicer: RetentionServicer, store: RetentionStore, events: list[RetentionEvent]
) -> None:
    record_id = _keep(store)
    target = retention_pb2.HoldTarget(record_id=record_id)
    with acting_as("acme", Role.COMPLIANCE):
        held = servicer.Hold(retention_pb2.HoldRequest(target=target, reason="case 9"), CONTEXT)
        assert held.record.held
        released = servicer.Release(retention_pb2.ReleaseRequest(target=target), CONTEXT)
        assert not released.record.held
        tenant = retention_pb2.HoldTarget(tenant="acme")
        assert servicer.Hold(retention_pb2.HoldRequest(target=tenant), CONTEXT).changed
        with pytest.raises(PermissionDenied):
            servicer.Hold(
                retention_pb2.HoldRequest(target=retention_pb2.HoldTarget(tenant="globex")),
                CONTEXT,
            )
        with pytest.raises(InvalidArgument):
            servicer.Hold(retention_pb2.HoldRequest(), CONTEXT)
    with acting_as("globex", Role.COMPLIANCE), pytest.raises(NotFound):
        servicer.Hold(retention_pb2.HoldRequest(target=target), CONTEXT)
    assert [(e.action, e.reason, e.actor_tenant) for e in events[:2]] == [
        ("hold", "case 9", "acme"),
        ("release", "", "acme"),
    ]


def test_erase_a_subject_then_the_tenant(
    servicer: RetentionServicer, store: RetentionStore, events: list[RetentionEvent]
) -> None:
    _keep(store, subject="alice")
    _keep(store, subject="bob")
    with acting_as("acme", Role.COMPLIANCE):
        one = servicer.Erase(retention_pb2.EraseRequest(subject="alice", reason="DSR-1"), CONTEXT)
        assert (one.records_erased, one.records_held, one.keys_destroyed) == (1, 0, 0)
        rest = servicer.Erase(retention_pb2.EraseRequest(), CONTEXT)
        assert (rest.records_erased, rest.keys_destroyed) == (1, 1)
        with pytest.raises(PermissionDenied):
            servicer.Erase(retention_pb2.EraseRequest(tenant="globex"), CONTEXT)
    assert events[0].action == "erase" and events[0].subject == "alice"

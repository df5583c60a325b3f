"""``broker.v1.Audit``: compliance queries, proofs, checkpoints and exports of the audit log.

Who sees what:

- ``auditor`` and ``admin`` see every tenant's entries;
- ``compliance`` sees only entries of its own tenant: the tenant filter is forced to it, and
  naming another tenant is PermissionDenied (the answer does not depend on what exists);
- anyone else gets PermissionDenied.

``GetEntry`` is how a person looks at one entry (the compliance console's entry page): it hands
the entry to ``on_view`` first, which puts an ``admin.audit.viewed`` entry on the log, so the
view is on the record before anything is shown; if that append fails, nothing is shown.

Checkpoints and consistency proofs reveal no entry content (sizes and hashes only), so every
reader may fetch them. Errors are ``BrokerError`` subclasses for the error interceptor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

import grpc
import orjson
import sqlalchemy as sa

from broker._proto.broker.v1 import audit_pb2, audit_pb2_grpc
from broker.audit.aggregate import Group, aggregate, day_of
from broker.audit.export import (
    build_export,
    build_receipts,
    csv_chunks,
    jsonl_chunks,
    siem_chunks,
    unb64,
)
from broker.audit.merkle import VerificationError
from broker.audit.note import Verifier
from broker.audit.query import AuditFilter, Order, StoredEntry, query_page
from broker.audit.store import AuditStore
from broker.auth.principal import Principal, Role, require_role
from broker.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from broker.retention.counts import due_by_day
from broker.server.context import current_principal

_READERS: Final = (Role.COMPLIANCE, Role.AUDITOR, Role.ADMIN)
_ALL_TENANTS: Final = (Role.AUDITOR, Role.ADMIN)
_CHUNK_BYTES: Final = 64 * 1024
_EXPORT_FORMATS: Final = ("jsonl", "csv", "ocsf", "cef")

#: Called with the viewer and the entry before ``GetEntry`` answers (see the module doc).
EntryViewHook = Callable[[Principal, StoredEntry], None]


class AuditServicer(audit_pb2_grpc.AuditServicer):
    """The Audit service over one log (its engine, store and verifier key)."""

    def __init__(
        self,
        engine: sa.Engine,
        store: AuditStore,
        verifier: Verifier,
        *,
        on_view: EntryViewHook | None = None,
    ) -> None:
        self._engine = engine
        self._store = store
        self._verifier = verifier
        self._on_view = on_view

    def QueryEntries(  # noqa: N802 - the proto fixes gRPC method names
        self, request: audit_pb2.QueryEntriesRequest, context: grpc.ServicerContext
    ) -> Iterator[audit_pb2.AuditEntry]:
        """One page of matching entries; the last carries the next page's token."""
        flt = _filter(request.filter, _reader())
        rows, token = query_page(
            self._engine,
            flt,
            page_size=request.page_size,
            cursor=request.page_token,
            start_index=request.start_index,
            order=_order(request.order),
        )
        for n, row in enumerate(rows):
            yield _entry_message(row, token if n == len(rows) - 1 else "")

    def GetEntry(  # noqa: N802 - the proto fixes gRPC method names
        self, request: audit_pb2.GetEntryRequest, context: grpc.ServicerContext
    ) -> audit_pb2.AuditEntry:
        """One entry by leaf index, after its viewing has been put on the log.

        An entry of another tenant is NotFound for a ``compliance`` caller, exactly like one
        that does not exist.
        """
        principal = _reader()
        if request.leaf_index < 0:
            raise InvalidArgument("leaf_index must not be negative")
        flt = AuditFilter(tenant=_tenant_scope(principal, ""), leaf_index=request.leaf_index)
        rows, _ = query_page(self._engine, flt, page_size=1)
        if not rows:
            raise NotFound(f"no audit entry {request.leaf_index}")
        if self._on_view is not None:
            self._on_view(principal, rows[0])
        return _entry_message(rows[0], "")

    def GetInclusionProof(  # noqa: N802 - the proto fixes gRPC method names
        self, request: audit_pb2.GetInclusionProofRequest, context: grpc.ServicerContext
    ) -> audit_pb2.GetInclusionProofResponse:
        """Receipts for one leaf or for every entry of a call, against the newest checkpoint."""
        tenant = _tenant_scope(_reader(), "")
        target = request.WhichOneof("target")
        if target == "leaf_index":
            flt = AuditFilter(tenant=tenant, leaf_index=request.leaf_index)
        elif target == "call_id" and request.call_id:
            flt = AuditFilter(tenant=tenant, call_id=request.call_id)
        else:
            raise InvalidArgument("name the entry to prove by leaf_index or call_id")
        receipts = build_receipts(self._store, self._engine, flt)
        proofs = [
            audit_pb2.InclusionProof(
                leaf_index=r["leaf_index"],
                entry=r["entry"].encode("utf-8"),
                hashes=[unb64(h, "proof") for h in r["proof"] or []],
                receipt_json=orjson.dumps(r).decode("utf-8"),
            )
            for r in receipts
        ]
        checkpoint = receipts[0]["checkpoint"]
        size = int(checkpoint.split("\n")[1])
        return audit_pb2.GetInclusionProofResponse(
            checkpoint=checkpoint, tree_size=size, proofs=proofs
        )

    def GetConsistencyProof(  # noqa: N802 - the proto fixes gRPC method names
        self, request: audit_pb2.GetConsistencyProofRequest, context: grpc.ServicerContext
    ) -> audit_pb2.GetConsistencyProofResponse:
        """RFC 9162 consistency proof between two sizes (size2 0 = the newest checkpoint)."""
        _reader()
        latest = self._store.latest_checkpoint()
        if latest is None:
            raise FailedPrecondition("the audit log has no checkpoint yet")
        size2 = request.size2 or latest.size
        if not 0 < request.size1 <= size2 <= latest.size:
            raise InvalidArgument(
                f"need 0 < size1 <= size2 <= {latest.size} (the newest checkpoint's size)"
            )
        hashes = self._store.consistency_proof(request.size1, size2)
        return audit_pb2.GetConsistencyProofResponse(
            size1=request.size1, size2=size2, hashes=hashes, checkpoint=latest.note
        )

    def GetCheckpoint(  # noqa: N802 - the proto fixes gRPC method names
        self, request: audit_pb2.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> audit_pb2.GetCheckpointResponse:
        """The newest signed checkpoint and the log's vkey."""
        _reader()
        latest = self._store.latest_checkpoint()
        if latest is None:
            raise FailedPrecondition("the audit log has no checkpoint yet")
        return audit_pb2.GetCheckpointResponse(
            checkpoint=latest.note, tree_size=latest.size, vkey=self._verifier.to_vkey()
        )

    def Export(  # noqa: N802 - the proto fixes gRPC method names
        self, request: audit_pb2.ExportRequest, context: grpc.ServicerContext
    ) -> Iterator[audit_pb2.ExportChunk]:
        """Stream an export: the manifest first, then the file bytes in chunks."""
        fmt = request.format or "jsonl"
        if fmt not in _EXPORT_FORMATS:
            raise InvalidArgument(f"format must be one of {', '.join(_EXPORT_FORMATS)}")
        flt = _filter(request.filter, _reader())
        manifest, items = build_export(self._engine, self._store, self._verifier, flt)
        yield audit_pb2.ExportChunk(manifest_json=orjson.dumps(manifest.to_json()).decode())
        if fmt == "jsonl":
            chunks = jsonl_chunks(manifest, items)
        elif fmt == "csv":
            chunks = csv_chunks(items)
        else:
            chunks = siem_chunks(fmt, manifest.origin, items)
        buffer = bytearray()
        try:
            for piece in chunks:
                buffer += piece
                if len(buffer) >= _CHUNK_BYTES:
                    yield audit_pb2.ExportChunk(data=bytes(buffer))
                    buffer.clear()
        except VerificationError as exc:  # only the SIEM formats refuse a damaged entry
            raise FailedPrecondition(
                f"cannot export {fmt}: {exc}; a jsonl export and `broker audit verify` locate it"
            ) from exc
        if buffer:
            yield audit_pb2.ExportChunk(data=bytes(buffer))

    def Aggregate(  # noqa: N802 - the proto fixes gRPC method names
        self, request: audit_pb2.AggregateRequest, context: grpc.ServicerContext
    ) -> audit_pb2.AggregateResponse:
        """The console's chart counts for a filter, grouped by the database, tenant-scoped."""
        flt = _filter(request.filter, _reader())
        counts = aggregate(self._engine, flt)
        due = due_by_day(self._engine, tenant=flt.tenant)

        def groups(found: list[Group]) -> list[audit_pb2.AggregateGroup]:
            return [audit_pb2.AggregateGroup(keys=g.keys, count=g.count) for g in found]

        return audit_pb2.AggregateResponse(
            entries=counts.entries,
            calls_by_day_outcome=groups(counts.calls_by_day_outcome),
            calls_by_tenant_model=groups(counts.calls_by_tenant_model),
            failures_by_reason=groups(counts.failures_by_reason),
            fields_by_label_action=groups(counts.fields_by_label_action),
            deletions_done_by_day=groups(counts.deletions_done_by_day),
            deletions_due_by_day=[
                audit_pb2.AggregateGroup(keys=[day_of(d)], count=n) for d, n in due
            ],
        )


_ORDERS: Final[dict[int, Order]] = {
    audit_pb2.QUERY_ORDER_UNSPECIFIED: Order.OLDEST_FIRST,
    audit_pb2.QUERY_ORDER_OLDEST_FIRST: Order.OLDEST_FIRST,
    audit_pb2.QUERY_ORDER_NEWEST_FIRST: Order.NEWEST_FIRST,
    audit_pb2.QUERY_ORDER_TIME_ASCENDING: Order.TIME_ASCENDING,
    audit_pb2.QUERY_ORDER_TIME_DESCENDING: Order.TIME_DESCENDING,
}


def _order(value: int) -> Order:
    """The query order a request names; InvalidArgument for a value this broker does not know."""
    order = _ORDERS.get(value)
    if order is None:
        raise InvalidArgument(
            f"order {value} is unknown: use QUERY_ORDER_OLDEST_FIRST, _NEWEST_FIRST, "
            "_TIME_ASCENDING or _TIME_DESCENDING"
        )
    return order


def _entry_message(row: StoredEntry, next_page_token: str) -> audit_pb2.AuditEntry:
    return audit_pb2.AuditEntry(
        leaf_index=row.leaf_index,
        entry=row.entry,
        entry_hash=row.entry_hash,
        time_us=row.time_us,
        kind=row.kind,
        tenant=row.tenant,
        subject=row.subject,
        call_id=row.call_id,
        model=row.model,
        vendor=row.vendor,
        status=row.status,
        next_page_token=next_page_token,
    )


def _reader() -> Principal:
    principal = current_principal()
    require_role(principal, *_READERS)
    return principal


def _tenant_scope(principal: Principal, requested: str) -> str | None:
    """The tenant the caller must be limited to (None: all), or PermissionDenied."""
    if principal.has_role(*_ALL_TENANTS):
        return requested or None
    if requested and requested != principal.tenant:
        raise PermissionDenied("the compliance role sees only its own tenant's audit entries")
    return principal.tenant


def _filter(msg: audit_pb2.AuditFilter, principal: Principal) -> AuditFilter:
    if msg.time_from_us < 0 or msg.time_to_us < 0:
        raise InvalidArgument("time bounds must not be negative")
    return AuditFilter(
        tenant=_tenant_scope(principal, msg.tenant),
        subject=msg.subject or None,
        model=msg.model or None,
        vendor=msg.vendor or None,
        status=msg.status or None,
        action=msg.action or None,
        label=msg.label or None,
        call_id=msg.call_id or None,
        kind=msg.kind or None,
        time_from_us=msg.time_from_us or None,
        time_to_us=msg.time_to_us or None,
        policy_revision=msg.policy_revision or None,
        without_outcome=msg.without_outcome or None,
    )

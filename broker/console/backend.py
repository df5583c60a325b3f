"""The console's only way to the data: the broker's gRPC API, called with the officer's token.

Every method takes the session's bearer token and sends it as ``authorization`` metadata, so
the broker's own interceptors authenticate the officer again and its servicers apply roles and
tenant scoping exactly as for ``broker audit ...``. Nothing here reads the database.

gRPC failures become :class:`BackendError` with an HTTP status for the page: a refused token
is 401 (the session ends), a refused role or tenant 403, a missing entry 404.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import grpc

from broker._proto.broker.v1 import audit_pb2, audit_pb2_grpc, retention_pb2, retention_pb2_grpc

_HTTP_STATUS: Final = {
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
}
_TIMEOUT: Final = 30.0


class BackendError(Exception):
    """A broker call failed; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _error(exc: grpc.RpcError) -> BackendError:
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = exc.details() if isinstance(exc, grpc.Call) else ""
    return BackendError(_HTTP_STATUS.get(code, 502), code.name, details or code.name)


@dataclass(frozen=True, slots=True)
class Proof:
    """What the in-browser verifier needs for one entry."""

    leaf_index: int
    entry: bytes
    hashes: list[bytes]
    checkpoint: str
    tree_size: int
    vkey: str


class Backend:
    """Audit and Retention stubs over one channel, shared by every session."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._channel = channel
        self._audit = audit_pb2_grpc.AuditStub(channel)
        self._retention = retention_pb2_grpc.RetentionStub(channel)

    @classmethod
    def connect(cls, target: str) -> Backend:
        """A backend over a plaintext channel to ``target`` (the broker on this host)."""
        return cls(grpc.insecure_channel(target))

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    @staticmethod
    def _md(token: str) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {token}"),)

    def query(
        self,
        token: str,
        flt: audit_pb2.AuditFilter,
        *,
        page_size: int,
        page_token: str = "",
        order: audit_pb2.QueryOrder.ValueType = audit_pb2.QUERY_ORDER_OLDEST_FIRST,
    ) -> tuple[list[audit_pb2.AuditEntry], str]:
        """One page of entries in ``order`` and the next page's token ("" at the end)."""
        request = audit_pb2.QueryEntriesRequest(
            filter=flt, page_size=page_size, page_token=page_token, order=order
        )
        try:
            entries = list(
                self._audit.QueryEntries(request, metadata=self._md(token), timeout=_TIMEOUT)
            )
        except grpc.RpcError as exc:
            raise _error(exc) from exc
        return entries, entries[-1].next_page_token if entries else ""

    def aggregate(self, token: str, flt: audit_pb2.AuditFilter) -> audit_pb2.AggregateResponse:
        """The chart counts of a search, grouped by the broker's database."""
        try:
            response: audit_pb2.AggregateResponse = self._audit.Aggregate(
                audit_pb2.AggregateRequest(filter=flt),
                metadata=self._md(token),
                timeout=_TIMEOUT,
            )
        except grpc.RpcError as exc:
            raise _error(exc) from exc
        return response

    def get_entry(self, token: str, leaf_index: int) -> audit_pb2.AuditEntry:
        """One entry; the broker records the view in the log before answering."""
        request = audit_pb2.GetEntryRequest(leaf_index=leaf_index)
        try:
            return self._audit.GetEntry(request, metadata=self._md(token), timeout=_TIMEOUT)
        except grpc.RpcError as exc:
            raise _error(exc) from exc

    def proof(self, token: str, leaf_index: int) -> Proof:
        """The inclusion proof of one entry against the newest checkpoint, with the log's vkey."""
        try:
            response = self._audit.GetInclusionProof(
                audit_pb2.GetInclusionProofRequest(leaf_index=leaf_index),
                metadata=self._md(token),
                timeout=_TIMEOUT,
            )
            checkpoint = self._audit.GetCheckpoint(
                audit_pb2.GetCheckpointRequest(), metadata=self._md(token), timeout=_TIMEOUT
            )
        except grpc.RpcError as exc:
            raise _error(exc) from exc
        item = response.proofs[0]
        return Proof(
            leaf_index=item.leaf_index,
            entry=item.entry,
            hashes=list(item.hashes),
            checkpoint=response.checkpoint,
            tree_size=response.tree_size,
            vkey=checkpoint.vkey,
        )

    def export(self, token: str, flt: audit_pb2.AuditFilter, fmt: str) -> Iterator[bytes]:
        """The export file's bytes, streamed (the first call fails early if refused)."""
        request = audit_pb2.ExportRequest(filter=flt, format=fmt)
        try:
            stream = self._audit.Export(request, metadata=self._md(token), timeout=300)
            first = next(stream, None)
        except grpc.RpcError as exc:
            raise _error(exc) from exc

        def chunks() -> Iterator[bytes]:
            if first is not None and first.data:
                yield first.data
            for chunk in stream:
                if chunk.data:
                    yield chunk.data

        return chunks()

    def list_records(
        self, token: str, *, tenant: str = "", call_id: str = "", page_size: int = 500
    ) -> list[retention_pb2.RetainedRecord]:
        """Retained records (metadata only), up to one page of ``page_size``."""
        request = retention_pb2.ListRecordsRequest(
            tenant=tenant, call_id=call_id, page_size=page_size
        )
        try:
            response = self._retention.ListRecords(
                request, metadata=self._md(token), timeout=_TIMEOUT
            )
        except grpc.RpcError as exc:
            raise _error(exc) from exc
        return list(response.records)

    def hold(
        self, token: str, target: retention_pb2.HoldTarget, reason: str, *, held: bool
    ) -> None:
        """Place (``held``) or lift a legal hold; the broker audits it."""
        try:
            if held:
                self._retention.Hold(
                    retention_pb2.HoldRequest(target=target, reason=reason),
                    metadata=self._md(token),
                    timeout=_TIMEOUT,
                )
            else:
                self._retention.Release(
                    retention_pb2.ReleaseRequest(target=target, reason=reason),
                    metadata=self._md(token),
                    timeout=_TIMEOUT,
                )
        except grpc.RpcError as exc:
            raise _error(exc) from exc

    def erase(
        self, token: str, *, tenant: str, subject: str, reason: str
    ) -> retention_pb2.EraseResponse:
        """Order an erasure; the broker audits it and receipts each destruction."""
        request = retention_pb2.EraseRequest(tenant=tenant, subject=subject, reason=reason)
        try:
            return self._retention.Erase(request, metadata=self._md(token), timeout=_TIMEOUT)
        except grpc.RpcError as exc:
            raise _error(exc) from exc

"""Retained records: the call path stores them, buyers read their own, compliance manages them.

Each record is one payload (a request *or* an answer) under its own fresh 256-bit data key:
``ciphertext = AES-256-GCM(data key, payload, aad = tenant, record id, call id, kind)`` and
``wrapped_key = AES-256-GCM(tenant KEK, data key, aad = tenant, record id, KEK version)``. A row
copied to another tenant or record does not decrypt; a deleted row leaves nothing to decrypt
with (see :mod:`broker.retention.shred`).

The store knows nothing of principals: the servicer decides who may see which tenant and
passes ``tenant`` (or None for "any tenant", admin only). A record of another tenant is
reported exactly like a missing one, so nobody can probe for existence.

The call path uses one method::

    RetentionStore.retain(*, tenant, subject, call_id, model,
                          request=None, response=None,
                          request_ttl_s=None, response_ttl_s=None,
                          now=None) -> tuple[RecordInfo, ...]

A half is kept when its payload is not None and its TTL is above zero; both halves commit in
one transaction or neither does. Payloads are opaque bytes (the JSON the model saw and the
answer the buyer got, as the lead decides).
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa

from broker.errors import Internal, InvalidArgument, NotFound
from broker.retention import crypto
from broker.retention.keyring import Keyring, KeyringCorrupt
from broker.retention.model import (
    MAX_TTL_SECONDS,
    PayloadKind,
    RecordInfo,
    from_us,
    to_us,
    utcnow,
)
from broker.retention.tables import retention_records, retention_tenant_holds
from broker.storage.db import for_writes

DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 500
_OVERHEAD: Final = crypto.NONCE_BYTES + crypto.TAG_BYTES
_META = [
    *(c for c in retention_records.c if c.name not in {"wrapped_key", "ciphertext"}),
    (sa.func.length(retention_records.c.ciphertext) - _OVERHEAD).label("size_bytes"),
]


@dataclass(frozen=True, slots=True)
class RetrievedRecord:
    """A record's metadata and its decrypted payload."""

    info: RecordInfo
    payload: bytes


def not_found(record_id: str) -> str:
    """The one message for a record that is absent, expired or another tenant's."""
    return f"retained record {record_id!r} not found"


def payload_context(tenant: str, record_id: str, call_id: str, kind: PayloadKind) -> bytes:
    """Associated data of a record's ciphertext."""
    return crypto.context("broker/retention/record/v1", tenant, record_id, call_id, kind.value)


class RetentionStore:
    """Retained records on one Engine, encrypted under ``keyring``. Thread-safe."""

    def __init__(
        self, engine: sa.Engine, keyring: Keyring, *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.engine = engine
        self.writes = for_writes(engine)
        self.keyring = keyring
        self.clock = clock

    def retain(
        self,
        *,
        tenant: str,
        subject: str,
        call_id: str,
        model: str,
        request: bytes | None = None,
        response: bytes | None = None,
        request_ttl_s: float | None = None,
        response_ttl_s: float | None = None,
        now: datetime | None = None,
    ) -> tuple[RecordInfo, ...]:
        """Encrypt and store the halves the policy asked to keep; return their metadata."""
        halves = [
            (kind, payload, ttl)
            for kind, payload, ttl in (
                (PayloadKind.REQUEST, request, request_ttl_s),
                (PayloadKind.RESPONSE, response, response_ttl_s),
            )
            if payload is not None and ttl is not None and ttl > 0
        ]
        for _, _, ttl in halves:
            if ttl is not None and ttl > MAX_TTL_SECONDS:
                raise InvalidArgument(f"retention TTL {ttl}s exceeds {MAX_TTL_SECONDS}s")
        if not halves:
            return ()
        moment = now or self.clock()
        rows: list[dict[str, Any]] = []
        with self.writes.begin() as conn:
            kek = self.keyring.current(conn, tenant)
            for kind, payload, ttl in halves:
                assert payload is not None and ttl is not None
                record_id = str(uuid.uuid4())
                data_key = crypto.new_key()
                rows.append(
                    {
                        "record_id": record_id,
                        "tenant": tenant,
                        "subject": subject,
                        "call_id": call_id,
                        "model": model,
                        "kind": kind.value,
                        "create_time_us": to_us(moment),
                        "due_time_us": to_us(moment + timedelta(seconds=ttl)),
                        "held": False,
                        "key_version": kek.version,
                        "wrapped_key": kek.wrap_data_key(data_key, record_id),
                        "ciphertext": crypto.seal(
                            data_key, payload, payload_context(tenant, record_id, call_id, kind)
                        ),
                    }
                )
            conn.execute(sa.insert(retention_records), rows)
            tenant_held = self._tenant_held(conn, tenant)
        return tuple(_info(row, tenant_held=tenant_held) for row in rows)

    def get(self, record_id: str, *, tenant: str, now: datetime | None = None) -> RetrievedRecord:
        """Decrypt one record of ``tenant``; NotFound if absent, past due or another tenant's."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(retention_records).where(
                    retention_records.c.record_id == record_id,
                    retention_records.c.tenant == tenant,
                )
            ).first()
            if row is None or row.due_time_us <= to_us(now or self.clock()):
                raise NotFound(not_found(record_id))
            try:
                kek = self.keyring.key(conn, tenant, row.key_version)
            except KeyringCorrupt as exc:
                raise Internal("a retained record's key is unusable", log_reason=str(exc)) from exc
            tenant_held = self._tenant_held(conn, tenant)
        kind = PayloadKind(row.kind)
        try:
            data_key = kek.unwrap_data_key(row.wrapped_key, record_id)
            payload = crypto.open_sealed(
                data_key, row.ciphertext, payload_context(tenant, record_id, row.call_id, kind)
            )
        except crypto.DecryptError as exc:
            raise Internal(
                "a retained record could not be decrypted",
                log_reason=f"record {record_id} of {tenant} failed authentication: {exc}",
            ) from exc
        return RetrievedRecord(_info(row._mapping, tenant_held=tenant_held), payload)

    def list(
        self,
        *,
        tenant: str | None,
        subject: str = "",
        call_id: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[RecordInfo], str]:
        """One page of records (every tenant when ``tenant`` is None), by due time.

        Every record still stored is listed: a record past its due time is a pending deletion
        the scheduler has not reached yet, or one a hold keeps.
        """
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        if size < 0:
            raise InvalidArgument("page_size must not be negative")
        c = retention_records.c
        query = sa.select(*_META).order_by(c.due_time_us, c.record_id).limit(size + 1)
        if tenant is not None:
            query = query.where(c.tenant == tenant)
        if subject:
            query = query.where(c.subject == subject)
        if call_id:
            query = query.where(c.call_id == call_id)
        if page_token:
            due, last = _decode_token(page_token)
            query = query.where(sa.tuple_(c.due_time_us, c.record_id) > sa.tuple_(due, last))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
            held = set(conn.execute(sa.select(retention_tenant_holds.c.tenant)).scalars())
        page = [_info(row._mapping, tenant_held=row.tenant in held) for row in rows[:size]]
        token = ""
        if len(rows) > size:
            last_row = rows[size - 1]
            token = _encode_token(last_row.due_time_us, last_row.record_id)
        return page, token

    def set_record_hold(self, record_id: str, *, tenant: str | None, held: bool) -> RecordInfo:
        """Place or lift the legal hold on one record; NotFound if the caller may not see it.

        Lifting a hold reschedules the record at its original due time: if that has passed,
        the next scheduler run deletes it.
        """
        c = retention_records.c
        condition = c.record_id == record_id
        if tenant is not None:
            condition = sa.and_(condition, c.tenant == tenant)
        with self.writes.begin() as conn:
            result = conn.execute(sa.update(retention_records).where(condition).values(held=held))
            if not result.rowcount:
                raise NotFound(not_found(record_id))
            row = conn.execute(sa.select(*_META).where(c.record_id == record_id)).one()
            tenant_held = self._tenant_held(conn, row.tenant)
        return _info(row._mapping, tenant_held=tenant_held)

    def set_tenant_hold(
        self, tenant: str, *, held: bool, reason: str = "", now: datetime | None = None
    ) -> bool:
        """Place or lift the tenant-wide hold; True if that changed anything."""
        with self.writes.begin() as conn:
            if not held:
                result = conn.execute(
                    sa.delete(retention_tenant_holds).where(
                        retention_tenant_holds.c.tenant == tenant
                    )
                )
                return bool(result.rowcount)
            if self._tenant_held(conn, tenant):
                return False
            conn.execute(
                sa.insert(retention_tenant_holds).values(
                    tenant=tenant, reason=reason, create_time_us=to_us(now or self.clock())
                )
            )
            return True

    def count_held(self, *, tenant: str | None) -> int:
        """Records kept by a record hold or a tenant hold (``tenant`` None: all tenants)."""
        c = retention_records.c
        held_tenants = sa.select(retention_tenant_holds.c.tenant)
        query = sa.select(sa.func.count()).where(sa.or_(c.held, c.tenant.in_(held_tenants)))
        if tenant is not None:
            query = query.where(c.tenant == tenant)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def rewrap(self, tenant: str, *, batch_size: int = 500) -> int:
        """Move the tenant's records to its current KEK version; return how many moved.

        Each batch re-wraps only the data keys (the payload ciphertext is untouched) and
        commits; rows another process holds are skipped and picked up by the next batch.
        """
        c = retention_records.c
        moved = 0
        while True:
            with self.writes.begin() as conn:
                current = self.keyring.current(conn, tenant)
                query = (
                    sa.select(c.record_id, c.key_version, c.wrapped_key)
                    .where(c.tenant == tenant, c.key_version != current.version)
                    .limit(batch_size)
                )
                if conn.dialect.name == "postgresql":
                    query = query.with_for_update(skip_locked=True)
                rows = conn.execute(query).all()
                for row in rows:
                    old = self.keyring.key(conn, tenant, row.key_version)
                    data_key = old.unwrap_data_key(row.wrapped_key, row.record_id)
                    conn.execute(
                        sa.update(retention_records)
                        .where(c.record_id == row.record_id)
                        .values(
                            key_version=current.version,
                            wrapped_key=current.wrap_data_key(data_key, row.record_id),
                        )
                    )
            moved += len(rows)
            if len(rows) < batch_size:
                return moved

    @staticmethod
    def _tenant_held(conn: sa.Connection, tenant: str) -> bool:
        found = conn.execute(
            sa.select(retention_tenant_holds.c.tenant).where(
                retention_tenant_holds.c.tenant == tenant
            )
        ).first()
        return found is not None


def _info(row: Any, *, tenant_held: bool) -> RecordInfo:
    size = row["size_bytes"] if "size_bytes" in row else len(row["ciphertext"]) - _OVERHEAD
    return RecordInfo(
        record_id=row["record_id"],
        tenant=row["tenant"],
        subject=row["subject"],
        call_id=row["call_id"],
        model=row["model"],
        kind=PayloadKind(row["kind"]),
        create_time=from_us(row["create_time_us"]),
        due_time=from_us(row["due_time_us"]),
        held=bool(row["held"]),
        tenant_held=tenant_held,
        key_id=f"kek/{row['tenant']}/v{row['key_version']}",
        size_bytes=size,
    )


def _encode_token(due_us: int, record_id: str) -> str:
    raw = json.dumps({"d": due_us, "r": record_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _decode_token(token: str) -> tuple[int, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        due, record_id = data["d"], data["r"]
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeEncodeError) as exc:
        raise InvalidArgument("page_token is not a token from a previous ListRecords") from exc
    if not isinstance(due, int) or not isinstance(record_id, str):
        raise InvalidArgument("page_token is not a token from a previous ListRecords")
    return due, record_id

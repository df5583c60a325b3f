"""Retention tables, as SQLAlchemy Core (every write is a set-based statement, no ORM objects).

- ``retention_keyring``: one row. ``check_blob`` is a known constant wrapped by the root key
  when the keyring was created: unwrapping it at start-up tells a *wrong* root key (the check
  fails) from *corrupt* data (the check passes but a tenant key does not unwrap).
- ``retention_tenant_keys``: tenant key-encryption keys (KEKs), one row per ``(tenant,
  version)``, each wrapped by the root key. The highest version is the current one.
- ``retention_records``: one retained payload (a request *or* an answer). ``ciphertext`` is
  ``nonce || AES-256-GCM(data key, payload)``, ``wrapped_key`` is the record's own data key
  wrapped by the tenant KEK ``key_version``. Deleting the row is the crypto-shred.
- ``retention_tenant_holds``: a legal hold on every record of a tenant, present or future.
- ``retention_receipts``: the deletion outbox, written in the transaction that deletes the
  record (primary key ``record_id``: one receipt per record, ever). ``delivered_us`` is set
  once ``on_deleted`` has accepted it. Receipts hold no subject, call id or payload.

Times are integer microseconds since the Unix epoch (UTC), which compare and index the same way
on SQLite and PostgreSQL. The schema is created by Alembic revision ``0004_retention``; a test
checks the two agree.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import SQLModel

metadata = SQLModel.metadata

retention_keyring = sa.Table(
    "retention_keyring",
    metadata,
    sa.Column("id", sa.SmallInteger(), primary_key=True, autoincrement=False),
    sa.Column("root_key_id", sa.String(256), nullable=False),
    sa.Column("check_blob", sa.LargeBinary(), nullable=False),
    sa.Column("create_time_us", sa.BigInteger(), nullable=False),
)

retention_tenant_keys = sa.Table(
    "retention_tenant_keys",
    metadata,
    sa.Column("tenant", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
    sa.Column("create_time_us", sa.BigInteger(), nullable=False),
)

retention_records = sa.Table(
    "retention_records",
    metadata,
    sa.Column("record_id", sa.String(36), primary_key=True),
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("subject", sa.String(256), nullable=False),
    sa.Column("call_id", sa.String(128), nullable=False),
    sa.Column("model", sa.String(320), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("create_time_us", sa.BigInteger(), nullable=False),
    sa.Column("due_time_us", sa.BigInteger(), nullable=False),
    sa.Column("held", sa.Boolean(), nullable=False),
    sa.Column("key_version", sa.Integer(), nullable=False),
    sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
    sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
    sa.CheckConstraint("kind IN ('request', 'response')", name="ck_retention_records_kind"),
    sa.Index("ix_retention_records_due_time_us", "due_time_us"),
    sa.Index("ix_retention_records_tenant_subject", "tenant", "subject"),
    sa.Index("ix_retention_records_tenant_record_id", "tenant", "record_id"),
)

retention_tenant_holds = sa.Table(
    "retention_tenant_holds",
    metadata,
    sa.Column("tenant", sa.String(128), primary_key=True),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("create_time_us", sa.BigInteger(), nullable=False),
)

retention_receipts = sa.Table(
    "retention_receipts",
    metadata,
    sa.Column("record_id", sa.String(36), primary_key=True),
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("due_time_us", sa.BigInteger(), nullable=False),
    sa.Column("done_time_us", sa.BigInteger(), nullable=False),
    sa.Column("key_id", sa.String(200), nullable=False),
    sa.Column("reason", sa.String(16), nullable=False),
    sa.Column("delivered_us", sa.BigInteger(), nullable=True),
    sa.CheckConstraint("reason IN ('ttl', 'erasure')", name="ck_retention_receipts_reason"),
    sa.Index("ix_retention_receipts_delivered_us", "delivered_us"),
)

"""The audit log's tables, as SQLAlchemy Core (writes are batched, so no ORM objects).

Sequencing and integration happen in the transaction that inserts the entries (see
:mod:`broker.audit.store`), so an entry's row is born with its leaf index as primary key and is
never updated: every table here is insert-only, and the Alembic revision ``0002_audit_log``
installs triggers on SQLite and PostgreSQL that refuse UPDATE and DELETE (and TRUNCATE on
PostgreSQL) outright.

- ``audit_entries``: one row per leaf; ``entry`` holds the canonical bytes the tree commits to,
  ``entry_hash`` their RFC 6962 leaf hash (for receipts). The other columns are copies of
  entry fields for queries; ``actions`` and ``labels`` are ``,a,b,`` lists matched with LIKE.
- ``audit_nodes``: the hash of every complete perfect subtree, keyed by ``(level, node_index)``
  as :mod:`broker.audit.merkle` assumes, leaves (level 0) included. Proofs read only this
  table, never the entry rows, so a tampered or moved entry row fails its own proof instead of
  its neighbour's, and the verifier names the right index.
- ``audit_checkpoints``: every signed checkpoint, one per tree size.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import SQLModel

metadata = SQLModel.metadata

audit_entries = sa.Table(
    "audit_entries",
    metadata,
    sa.Column("leaf_index", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("entry", sa.LargeBinary(), nullable=False),
    sa.Column("entry_hash", sa.LargeBinary(), nullable=False),
    sa.Column("time_us", sa.BigInteger(), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("subject", sa.String(256), nullable=False),
    sa.Column("call_id", sa.String(128), nullable=False),
    sa.Column("model", sa.String(320), nullable=False),
    sa.Column("vendor", sa.String(128), nullable=False),
    sa.Column("status", sa.String(64), nullable=False),
    sa.Column("actions", sa.Text(), nullable=False),
    sa.Column("labels", sa.Text(), nullable=False),
    sa.Index("ix_audit_entries_time_us", "time_us"),
    sa.Index("ix_audit_entries_tenant_leaf_index", "tenant", "leaf_index"),
    sa.Index("ix_audit_entries_call_id", "call_id"),
    # Administrative entries keep their target in ``model``: finds "was record X's deletion
    # already audited?" without scanning the log (the deletion hook asks on every deletion).
    sa.Index("ix_audit_entries_kind_model", "kind", "model"),
)

audit_nodes = sa.Table(
    "audit_nodes",
    metadata,
    sa.Column("level", sa.SmallInteger(), primary_key=True, autoincrement=False),
    sa.Column("node_index", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("hash", sa.LargeBinary(), nullable=False),
)

audit_checkpoints = sa.Table(
    "audit_checkpoints",
    metadata,
    sa.Column("size", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("root_hash", sa.LargeBinary(), nullable=False),
    sa.Column("note", sa.Text(), nullable=False),
    sa.Column("time_us", sa.BigInteger(), nullable=False),
)

APPEND_ONLY_TABLES = ("audit_entries", "audit_nodes", "audit_checkpoints")

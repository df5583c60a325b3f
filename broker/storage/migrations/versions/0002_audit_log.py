"""Audit log tables (entries, tree nodes, checkpoints) and the triggers that make them append-only.

Revision ID: 0002_audit_log
Revises: 0001_registry_tables
Create Date: 2025-01-02 00:00:00

The triggers are the database's own refusal of UPDATE, DELETE (and, on PostgreSQL, TRUNCATE) on
the log tables, so a bug or an operator with SQL access cannot rewrite history without first
dropping them, which the offline verifier then catches anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002_audit_log"
down_revision: str | Sequence[str] | None = "0001_registry_tables"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("audit_entries", "audit_nodes", "audit_checkpoints")
_PG_FUNCTION = "audit_refuse_change"


def upgrade() -> None:
    """Create the audit tables and their append-only triggers."""
    op.create_table(
        "audit_entries",
        sa.Column("leaf_index", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("entry", sa.LargeBinary(), nullable=False),
        sa.Column("entry_hash", sa.LargeBinary(), nullable=False),
        sa.Column("time_us", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("subject", sa.String(length=256), nullable=False),
        sa.Column("call_id", sa.String(length=128), nullable=False),
        sa.Column("model", sa.String(length=320), nullable=False),
        sa.Column("vendor", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=64), nullable=False),
        sa.Column("actions", sa.Text(), nullable=False),
        sa.Column("labels", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("leaf_index"),
    )
    op.create_index("ix_audit_entries_time_us", "audit_entries", ["time_us"])
    op.create_index("ix_audit_entries_tenant_leaf_index", "audit_entries", ["tenant", "leaf_index"])
    op.create_index("ix_audit_entries_call_id", "audit_entries", ["call_id"])
    op.create_table(
        "audit_nodes",
        sa.Column("level", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("node_index", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("level", "node_index"),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("root_hash", sa.LargeBinary(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("time_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("size"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"CREATE FUNCTION {_PG_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN RAISE EXCEPTION 'audit log table % is append-only (% refused)', "
            "TG_TABLE_NAME, TG_OP; END $$"
        )
        for table in _TABLES:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION {_PG_FUNCTION}()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {_PG_FUNCTION}()"
            )
    else:
        for table in _TABLES:
            for action in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, 'audit log table {table} is append-only "
                    f"({action} refused)'); END"
                )


def downgrade() -> None:
    """Drop the audit tables (the log is lost: only for development databases)."""
    for table in reversed(_TABLES):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {_PG_FUNCTION}()")

"""Retention tables: keyring, tenant keys, retained records, tenant holds, deletion receipts.

Revision ID: 0004_retention
Revises: 0001_registry_tables
Create Date: 2025-01-04 00:00:00

On its own branch (``retention``) so it does not depend on the order in which the audit and
retention revisions were written; ``migrate()`` upgrades every head.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004_retention"
down_revision: str | Sequence[str] | None = "0001_registry_tables"
branch_labels: str | Sequence[str] | None = ("retention",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the retention tables."""
    op.create_table(
        "retention_keyring",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("root_key_id", sa.String(length=256), nullable=False),
        sa.Column("check_blob", sa.LargeBinary(), nullable=False),
        sa.Column("create_time_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "retention_tenant_keys",
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("create_time_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "version"),
    )
    op.create_table(
        "retention_records",
        sa.Column("record_id", sa.String(length=36), nullable=False),
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("subject", sa.String(length=256), nullable=False),
        sa.Column("call_id", sa.String(length=128), nullable=False),
        sa.Column("model", sa.String(length=320), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("create_time_us", sa.BigInteger(), nullable=False),
        sa.Column("due_time_us", sa.BigInteger(), nullable=False),
        sa.Column("held", sa.Boolean(), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint("kind IN ('request', 'response')", name="ck_retention_records_kind"),
        sa.PrimaryKeyConstraint("record_id"),
    )
    op.create_index("ix_retention_records_due_time_us", "retention_records", ["due_time_us"])
    op.create_index(
        "ix_retention_records_tenant_subject", "retention_records", ["tenant", "subject"]
    )
    op.create_index(
        "ix_retention_records_tenant_record_id", "retention_records", ["tenant", "record_id"]
    )
    op.create_table(
        "retention_tenant_holds",
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("create_time_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant"),
    )
    op.create_table(
        "retention_receipts",
        sa.Column("record_id", sa.String(length=36), nullable=False),
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("due_time_us", sa.BigInteger(), nullable=False),
        sa.Column("done_time_us", sa.BigInteger(), nullable=False),
        sa.Column("key_id", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("delivered_us", sa.BigInteger(), nullable=True),
        sa.CheckConstraint("reason IN ('ttl', 'erasure')", name="ck_retention_receipts_reason"),
        sa.PrimaryKeyConstraint("record_id"),
    )
    op.create_index("ix_retention_receipts_delivered_us", "retention_receipts", ["delivered_us"])


def downgrade() -> None:
    """Drop the retention tables (retained data and wrapped keys are lost)."""
    op.drop_table("retention_receipts")
    op.drop_table("retention_tenant_holds")
    op.drop_table("retention_records")
    op.drop_table("retention_tenant_keys")
    op.drop_table("retention_keyring")

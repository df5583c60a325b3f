"""Metering: model prices, usage records (append-only) and shared rate-limit buckets.

Revision ID: 0009_metering
Revises: 0008_policy_activations
Create Date: 2026-12-07 16:00:00

``usage_records`` gets the same append-only triggers as the audit log (revision 0002): an
invoice line is as hard to rewrite as the log entry it proves into. Existing model versions get
``pricing_json = ''``: free, which is what they were.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_metering"
down_revision: str | Sequence[str] | None = "0008_policy_activations"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PG_FUNCTION = "usage_refuse_change"


def upgrade() -> None:
    """Add ``model_versions.pricing_json``; create ``usage_records`` and ``rate_buckets``."""
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("pricing_json", sa.Text(), server_default="", nullable=False))
    op.create_table(
        "usage_records",
        sa.Column("call_id", sa.String(length=128), nullable=False),
        sa.Column("leaf_index", sa.BigInteger(), nullable=False),
        sa.Column("time_us", sa.BigInteger(), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("subject", sa.String(length=256), nullable=False),
        sa.Column("vendor", sa.String(length=128), nullable=False),
        sa.Column("model", sa.String(length=320), nullable=False),
        sa.Column("status", sa.String(length=64), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("tensor_elements", sa.BigInteger(), nullable=False),
        sa.Column("cpu_us", sa.BigInteger(), nullable=False),
        sa.Column("bytes_in", sa.BigInteger(), nullable=False),
        sa.Column("bytes_out", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("cost_micros", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("call_id", name="pk_usage_records"),
        sa.UniqueConstraint("leaf_index", name="uq_usage_records_leaf_index"),
    )
    op.create_index("ix_usage_records_tenant_month", "usage_records", ["tenant", "month"])
    op.create_index("ix_usage_records_vendor_month", "usage_records", ["vendor", "month"])
    op.create_table(
        "rate_buckets",
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated_us", sa.BigInteger(), nullable=False),
        sa.Column("granted", sa.SmallInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_rate_buckets"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"CREATE FUNCTION {_PG_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN RAISE EXCEPTION 'usage table % is append-only (% refused)', "
            "TG_TABLE_NAME, TG_OP; END $$"
        )
        op.execute(
            "CREATE TRIGGER usage_records_append_only BEFORE UPDATE OR DELETE ON usage_records "
            f"FOR EACH ROW EXECUTE FUNCTION {_PG_FUNCTION}()"
        )
        op.execute(
            "CREATE TRIGGER usage_records_no_truncate BEFORE TRUNCATE ON usage_records "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {_PG_FUNCTION}()"
        )
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER usage_records_no_{action.lower()} BEFORE {action} ON "
                "usage_records BEGIN SELECT RAISE(ABORT, 'usage table usage_records is "
                f"append-only ({action} refused)'); END"
            )


def downgrade() -> None:
    """Drop the metering tables and the price column (usage history is lost)."""
    op.drop_table("rate_buckets")
    op.drop_table("usage_records")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {_PG_FUNCTION}()")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("pricing_json")

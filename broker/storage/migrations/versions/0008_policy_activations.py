"""Policy activations: the bundles activated in a cluster, newest last.

Revision ID: 0008_policy_activations
Revises: 0001_registry_tables
Create Date: 2026-12-07 13:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_policy_activations"
down_revision: str | Sequence[str] | None = "0001_registry_tables"
branch_labels: str | Sequence[str] | None = ("policy",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``policy_activations``."""
    op.create_table(
        "policy_activations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("revision", sa.String(length=80), nullable=False),
        sa.Column("files", sa.LargeBinary(), nullable=False),
        sa.Column("activated_at", sa.Float(), nullable=False),
        sa.Column("replica", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_policy_activations_revision", "policy_activations", ["revision"])


def downgrade() -> None:
    """Drop ``policy_activations``."""
    op.drop_index("ix_policy_activations_revision", table_name="policy_activations")
    op.drop_table("policy_activations")

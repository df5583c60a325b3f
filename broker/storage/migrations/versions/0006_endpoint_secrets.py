"""Endpoint secrets: vendors' API keys, sealed, one row per model version reference.

Revision ID: 0006_endpoint_secrets
Revises: 0001_registry_tables
Create Date: 2026-11-28 10:00:00

On its own branch (``endpoint_secrets``) like every concern; ``migrate()`` upgrades all heads.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_endpoint_secrets"
down_revision: str | Sequence[str] | None = "0001_registry_tables"
branch_labels: str | Sequence[str] | None = ("endpoint_secrets",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``endpoint_secrets``."""
    op.create_table(
        "endpoint_secrets",
        sa.Column("ref", sa.String(length=300), nullable=False),
        sa.Column("vendor", sa.String(length=128), nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("update_time", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("ref", name="pk_endpoint_secrets"),
    )


def downgrade() -> None:
    """Drop ``endpoint_secrets`` (vendors must set their keys again after an upgrade)."""
    op.drop_table("endpoint_secrets")

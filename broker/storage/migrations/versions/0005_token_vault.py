"""Token vault: tokenized values, sealed per tenant, with an expiry.

Revision ID: 0005_token_vault
Revises: 0001_registry_tables
Create Date: 2026-11-27 21:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_token_vault"
down_revision: str | Sequence[str] | None = "0001_registry_tables"
branch_labels: str | Sequence[str] | None = ("vault",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``vault_tokens``."""
    op.create_table(
        "vault_tokens",
        sa.Column("token", sa.String(length=24), nullable=False),
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("token", name="pk_vault_tokens"),
    )
    op.create_index("ix_vault_tokens_expires_at", "vault_tokens", ["expires_at"])


def downgrade() -> None:
    """Drop ``vault_tokens``."""
    op.drop_index("ix_vault_tokens_expires_at", table_name="vault_tokens")
    op.drop_table("vault_tokens")

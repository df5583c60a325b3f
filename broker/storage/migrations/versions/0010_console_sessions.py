"""Console sessions and started OIDC sign-ins, shared by the compliance console's processes.

Revision ID: 0010_console_sessions
Revises: 0008_policy_activations
Create Date: 2026-12-07 16:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_console_sessions"
down_revision: str | Sequence[str] | None = "0009_metering"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``console_sessions`` and ``console_oidc_logins`` (ids' hashes, sealed contents)."""
    op.create_table(
        "console_sessions",
        sa.Column("id_hash", sa.LargeBinary(), nullable=False),
        sa.Column("sealed_token", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id_hash"),
    )
    op.create_index("ix_console_sessions_expires_at", "console_sessions", ["expires_at"])
    op.create_table(
        "console_oidc_logins",
        sa.Column("id_hash", sa.LargeBinary(), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id_hash"),
    )
    op.create_index("ix_console_oidc_logins_started_at", "console_oidc_logins", ["started_at"])


def downgrade() -> None:
    """Drop ``console_oidc_logins`` and ``console_sessions``."""
    op.drop_index("ix_console_oidc_logins_started_at", table_name="console_oidc_logins")
    op.drop_table("console_oidc_logins")
    op.drop_index("ix_console_sessions_expires_at", table_name="console_sessions")
    op.drop_table("console_sessions")

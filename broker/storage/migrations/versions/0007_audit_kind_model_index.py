"""Audit entries: index (kind, model) so administrative targets are found without a scan.

Revision ID: 0007_audit_kind_model_index
Revises: 0002_audit_log
Create Date: 2026-11-27 22:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007_audit_kind_model_index"
down_revision: str | Sequence[str] | None = "0002_audit_log"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``ix_audit_entries_kind_model``."""
    op.create_index("ix_audit_entries_kind_model", "audit_entries", ["kind", "model"])


def downgrade() -> None:
    """Drop ``ix_audit_entries_kind_model``."""
    op.drop_index("ix_audit_entries_kind_model", table_name="audit_entries")

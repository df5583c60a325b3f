"""Model packages: ``model_versions.package_digest`` names a sandbox model's package.

Revision ID: 0003_model_packages
Revises: 0001_registry_tables
Create Date: 2025-01-03 00:00:00

On its own branch (``packages``) so it does not depend on the order in which other concerns'
revisions land; ``migrate()`` upgrades every head. Existing rows get "" (no package), which is
right for remote runtimes; a sandbox model registered before this revision must be re-registered
with its package digest before it can be called.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003_model_packages"
down_revision: str | Sequence[str] | None = "0001_registry_tables"
branch_labels: str | Sequence[str] | None = ("packages",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the package digest column."""
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(
            sa.Column("package_digest", sa.String(length=71), nullable=False, server_default="")
        )


def downgrade() -> None:
    """Drop the package digest column (sandbox models lose their package reference)."""
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("package_digest")

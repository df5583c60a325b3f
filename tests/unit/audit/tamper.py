"""What an attacker with SQL access does: drop the append-only triggers, then edit the log."""

from __future__ import annotations

import sqlalchemy as sa

from broker.audit.tables import APPEND_ONLY_TABLES


def drop_triggers(engine: sa.Engine) -> None:
    """Remove the append-only triggers on both engines."""
    with engine.begin() as conn:
        for table in APPEND_ONLY_TABLES:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text(f"DROP TRIGGER {table}_append_only ON {table}"))
                conn.execute(sa.text(f"DROP TRIGGER {table}_no_truncate ON {table}"))
            else:
                conn.execute(sa.text(f"DROP TRIGGER {table}_no_update"))
                conn.execute(sa.text(f"DROP TRIGGER {table}_no_delete"))


def execute(engine: sa.Engine, sql: str, **params: object) -> None:
    """Run one statement in its own transaction."""
    with engine.begin() as conn:
        conn.execute(sa.text(sql), params)

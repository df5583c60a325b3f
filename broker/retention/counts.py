"""Retained records counted per due day by the database, for the console's deletions chart.

Metadata only (tenant and due time): nothing is decrypted or even read of a record's content.
"""

from __future__ import annotations

from typing import Final

import sqlalchemy as sa

from broker.retention.tables import retention_records

DAY_US: Final = 86_400_000_000
MAX_DAYS: Final = 500


def due_by_day(engine: sa.Engine, *, tenant: str | None) -> list[tuple[int, int]]:
    """(day number since the epoch, records due that day), ``tenant`` None meaning every one.

    The days with the most records come first, at most ``MAX_DAYS`` of them.
    """
    c = retention_records.c
    day = (c.due_time_us / DAY_US).label("day")
    count = sa.func.count().label("n")
    query = sa.select(day, count).group_by(day).order_by(count.desc(), day).limit(MAX_DAYS)
    if tenant is not None:
        query = query.where(c.tenant == tenant)
    with engine.connect() as conn:
        return [(int(d), int(n)) for d, n in conn.execute(query)]

"""Counts over the log for the console's charts, computed by the database with GROUP BY.

Each count applies the caller's :class:`~broker.audit.query.AuditFilter` (tenant-scoped by the
service exactly as queries are) plus the entry kind it is about:

- calls per UTC day and outcome, and per tenant and model (``call.outcome`` entries);
- failures and denials per reason: the outcome's ``error_class``, else its status;
- fields per label and action (``call.intent`` entries; the JSON ``fields`` of each entry are
  unnested in SQL: ``json_each`` on SQLite, ``jsonb_array_elements`` on PostgreSQL); an
  entity row counts as one, under its ``entity.<action>``, as a field row does;
- deletions done per UTC day (``admin.retention.deleted`` entries, by the entry's time).

Only labels, actions, statuses, error classes, tenants and models are grouped on: names, never
payload values, which entries do not hold anyway. Days are whole days since the epoch, computed
with integer division so both databases agree without date functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from broker.audit.query import AuditFilter, filter_clauses
from broker.audit.tables import audit_entries

DAY_US: Final = 86_400_000_000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
#: Groups returned per chart at most (the largest counts first), so a chart stays readable
#: and an answer small however many tenants, models or labels there are.
MAX_GROUPS: Final = 500


@dataclass(frozen=True, slots=True)
class Group:
    """One group: its keys (in the order the chart names them) and how many entries."""

    keys: tuple[str, ...]
    count: int


@dataclass(slots=True)
class Aggregates:
    """Every chart's groups for one filter."""

    calls_by_day_outcome: list[Group] = field(default_factory=list)
    calls_by_tenant_model: list[Group] = field(default_factory=list)
    failures_by_reason: list[Group] = field(default_factory=list)
    fields_by_label_action: list[Group] = field(default_factory=list)
    deletions_done_by_day: list[Group] = field(default_factory=list)
    entries: int = 0


def day_of(day_number: int) -> str:
    """A day number (whole days since the epoch) as ``YYYY-MM-DD``."""
    return (_EPOCH + timedelta(days=day_number)).strftime("%Y-%m-%d")


def aggregate(engine: sa.Engine, flt: AuditFilter) -> Aggregates:
    """Every chart's counts for ``flt``, each one GROUP BY query, in one read transaction."""
    c = audit_entries.c
    where = filter_clauses(flt)
    day = (c.time_us / DAY_US).label("day")
    outcome = c.kind == "call.outcome"
    postgres = engine.dialect.name == "postgresql"
    with engine.connect() as conn:
        result = Aggregates()
        result.entries = int(
            conn.execute(
                sa.select(sa.func.count()).select_from(audit_entries).where(*where)
            ).scalar_one()
        )
        result.calls_by_day_outcome = [
            Group((day_of(int(d)), s), int(n))
            for d, s, n in _grouped(conn, (day, c.status), [outcome, *where])
        ]
        result.calls_by_tenant_model = [
            Group((t, m), int(n))
            for t, m, n in _grouped(conn, (c.tenant, c.model), [outcome, *where])
        ]
        error_class = _json_text(c.entry, "error_class", postgres=postgres)
        reason = sa.func.coalesce(sa.func.nullif(error_class, ""), c.status)
        result.failures_by_reason = [
            Group((str(r),), int(n))
            for r, n in _grouped(
                conn, (reason.label("reason"),), [outcome, c.status != "OK", *where]
            )
        ]
        result.fields_by_label_action = _labels_and_actions(conn, where, postgres=postgres)
        deleted = c.kind == "admin.retention.deleted"
        result.deletions_done_by_day = [
            Group((day_of(int(d)),), int(n)) for d, n in _grouped(conn, (day,), [deleted, *where])
        ]
    return result


def _grouped(
    conn: sa.Connection, keys: tuple[Any, ...], where: list[sa.ColumnElement[bool]]
) -> list[tuple[Any, ...]]:
    count = sa.func.count().label("n")
    query = (
        sa.select(*keys, count)
        .select_from(audit_entries)
        .where(*where)
        .group_by(*keys)
        .order_by(count.desc(), *keys)
        .limit(MAX_GROUPS)
    )
    return [tuple(row) for row in conn.execute(query)]


def _json_text(column: Any, key: str, *, postgres: bool) -> sa.ColumnElement[Any]:
    """One top-level string member of the entry's JSON, in SQL (NULL if absent)."""
    if postgres:
        document = sa.cast(sa.func.convert_from(column, "UTF8"), JSONB)
        member: sa.ColumnElement[Any] = document[key].astext
        return member
    return sa.func.json_extract(sa.cast(column, sa.Text), f"$.{key}")


def _labels_and_actions(
    conn: sa.Connection, where: list[sa.ColumnElement[bool]], *, postgres: bool
) -> list[Group]:
    """Fields per (label, action) over intents: each entry's ``fields`` unnested in SQL."""
    c = audit_entries.c
    if postgres:
        document = sa.cast(sa.func.convert_from(c.entry, "UTF8"), JSONB)
        fields = (
            sa.func.jsonb_array_elements(document["fields"])
            .table_valued(sa.column("value", JSONB))
            .lateral("f")
        )
        labels = (
            sa.func.jsonb_array_elements_text(fields.c.value["labels"])
            .table_valued("value")
            .lateral("l")
        )
        action: sa.ColumnElement[Any] = fields.c.value["action"].astext
    else:
        fields = (
            sa.func.json_each(sa.cast(c.entry, sa.Text), "$.fields")
            .table_valued("value")
            .alias("f")
        )
        labels = sa.func.json_each(fields.c.value, "$.labels").table_valued("value").alias("l")
        action = sa.func.json_extract(fields.c.value, "$.action")
    label = sa.func.coalesce(labels.c.value, "(none)").label("label")
    action = action.label("action")
    count = sa.func.count().label("n")
    query = (
        sa.select(label, action, count)
        .select_from(audit_entries.join(fields, sa.true()).outerjoin(labels, sa.true()))
        .where(c.kind == "call.intent", *where)
        .group_by(label, action)
        .order_by(count.desc(), label, action)
        .limit(MAX_GROUPS)
    )
    return [Group((str(lb), str(a)), int(n)) for lb, a, n in conn.execute(query)]

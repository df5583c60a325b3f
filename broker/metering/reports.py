"""A month of usage for a buyer (invoice) or a vendor (statement): records and totals.

Totals are ``SUM`` over exactly the records the pages list (same filter, no rounding: every
amount is an integer number of micros), so an invoice's total is the sum of its lines by
construction, and the reconcile test checks it against the records and the audit log.

Who may read what is decided here, once, for the gRPC service and anything else that asks
(:func:`report_scope`): a buyer reads only its own tenant, a vendor only its own models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa

from broker.auth.principal import Principal, Role
from broker.errors import InvalidArgument, PermissionDenied
from broker.metering.tables import usage_records

DEFAULT_PAGE_SIZE: Final = 500
MAX_PAGE_SIZE: Final = 5000
_MONTH_RE: Final = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
_SUMMED: Final = (
    "calls",
    "input_tokens",
    "output_tokens",
    "tensor_elements",
    "cpu_us",
    "bytes_in",
    "bytes_out",
    "cost_micros",
)


@dataclass(frozen=True, slots=True)
class ReportScope:
    """Whose usage a report covers: a month, and a tenant and/or a vendor ("" = any)."""

    month: str
    tenant: str = ""
    vendor: str = ""


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One usage record as stored (``usage_records`` columns)."""

    call_id: str
    leaf_index: int
    time_us: int
    month: str
    tenant: str
    subject: str
    vendor: str
    model: str
    status: str
    calls: int
    input_tokens: int
    output_tokens: int
    tensor_elements: int
    cpu_us: int
    bytes_in: int
    bytes_out: int
    currency: str
    cost_micros: int


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """The sums of one currency's records in a report."""

    currency: str
    records: int
    calls: int
    input_tokens: int
    output_tokens: int
    tensor_elements: int
    cpu_us: int
    bytes_in: int
    bytes_out: int
    cost_micros: int


def check_month(month: str) -> str:
    """``month`` if it is ``YYYY-MM``; InvalidArgument saying so otherwise."""
    if not _MONTH_RE.fullmatch(month):
        raise InvalidArgument("month must be a calendar month in UTC as YYYY-MM, like 2026-12")
    return month


def report_scope(principal: Principal, month: str, tenant: str, vendor: str) -> ReportScope:
    """The scope ``principal`` may read, or PermissionDenied (fail closed).

    - ``admin``: any tenant and vendor;
    - a vendor statement (``vendor`` set): only the caller's own vendor name, ``vendor`` role;
      ``tenant`` may narrow it to one buyer;
    - otherwise a buyer invoice: only the caller's own tenant (``tenant`` empty or equal to
      it), ``buyer`` or ``compliance`` role.
    """
    check_month(month)
    if principal.has_role(Role.ADMIN):
        return ReportScope(month, tenant, vendor)
    if vendor:
        if not (principal.has_role(Role.VENDOR) and vendor == principal.tenant):
            raise PermissionDenied(
                f"usage of vendor {vendor}'s models is for that vendor only (vendor role)"
            )
        return ReportScope(month, tenant, vendor)
    tenant = tenant or principal.tenant
    if not (principal.has_role(Role.BUYER, Role.COMPLIANCE) and tenant == principal.tenant):
        raise PermissionDenied(
            f"usage of tenant {tenant} is for that tenant only (buyer or compliance role)"
        )
    return ReportScope(month, tenant, "")


def _where(scope: ReportScope) -> list[sa.ColumnElement[bool]]:
    table = usage_records.c
    clauses = [table.month == scope.month]
    if scope.tenant:
        clauses.append(table.tenant == scope.tenant)
    if scope.vendor:
        clauses.append(table.vendor == scope.vendor)
    return clauses


def usage_page(
    engine: sa.Engine, scope: ReportScope, *, page_size: int = 0, after_leaf: int = -1
) -> tuple[list[UsageRow], int | None]:
    """Records of ``scope`` after leaf ``after_leaf``, by leaf index; and the next cursor."""
    size = DEFAULT_PAGE_SIZE if page_size <= 0 else min(page_size, MAX_PAGE_SIZE)
    query = (
        sa.select(usage_records)
        .where(*_where(scope), usage_records.c.leaf_index > after_leaf)
        .order_by(usage_records.c.leaf_index)
        .limit(size + 1)
    )
    with engine.connect() as conn:
        rows = [UsageRow(*row) for row in conn.execute(query)]
    if len(rows) > size:
        rows = rows[:size]
        return rows, rows[-1].leaf_index
    return rows, None


def usage_totals(engine: sa.Engine, scope: ReportScope) -> list[UsageTotals]:
    """Per currency, the count and sums of every record of ``scope`` (one query)."""
    c = usage_records.c
    query = (
        sa.select(
            c.currency,
            sa.func.count(),
            *(sa.func.coalesce(sa.func.sum(c[name]), 0) for name in _SUMMED),
        )
        .where(*_where(scope))
        .group_by(c.currency)
        .order_by(c.currency)
    )
    with engine.connect() as conn:
        return [
            UsageTotals(str(row[0]), *(int(value) for value in row[1:]))
            for row in conn.execute(query)
        ]

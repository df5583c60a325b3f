"""The metering tables: one usage record per call, and the shared rate-limit buckets.

``usage_records`` rows are written only as companions of a call's audit outcome entry (see
:mod:`broker.metering.records`): same transaction, so a record exists exactly when its outcome
entry does, and ``leaf_index`` is that entry's index in the Merkle log. Like the log they are
append-only: triggers (revision 0009_metering) refuse UPDATE and DELETE, so an invoice line
cannot be edited after the fact without dropping them first.

``rate_buckets`` holds one token bucket per limited (tenant) or (tenant, model): its tokens and
when they were last counted. Every broker process and replica takes from the same row, so a
limit holds across all of them (see :mod:`broker.metering.limits`).

Amounts are integers: ``cost_micros`` in millionths of ``currency`` (see
:mod:`broker.registry.pricing`); never a float.
"""

from __future__ import annotations

from typing import Final

import sqlalchemy as sa
from sqlmodel import SQLModel

usage_records = sa.Table(
    "usage_records",
    SQLModel.metadata,
    sa.Column("call_id", sa.String(128), nullable=False),
    sa.Column("leaf_index", sa.BigInteger, nullable=False),
    sa.Column("time_us", sa.BigInteger, nullable=False),
    sa.Column("month", sa.String(7), nullable=False),
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("subject", sa.String(256), nullable=False),
    sa.Column("vendor", sa.String(128), nullable=False),
    sa.Column("model", sa.String(320), nullable=False),
    sa.Column("status", sa.String(64), nullable=False),
    sa.Column("calls", sa.BigInteger, nullable=False),
    sa.Column("input_tokens", sa.BigInteger, nullable=False),
    sa.Column("output_tokens", sa.BigInteger, nullable=False),
    sa.Column("tensor_elements", sa.BigInteger, nullable=False),
    sa.Column("cpu_us", sa.BigInteger, nullable=False),
    sa.Column("bytes_in", sa.BigInteger, nullable=False),
    sa.Column("bytes_out", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("cost_micros", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("call_id", name="pk_usage_records"),
    sa.UniqueConstraint("leaf_index", name="uq_usage_records_leaf_index"),
    sa.Index("ix_usage_records_tenant_month", "tenant", "month"),
    sa.Index("ix_usage_records_vendor_month", "vendor", "month"),
)

#: Column positions a usage row tuple is built in (``usage_records`` column order).
USAGE_COLUMNS: Final = tuple(c.name for c in usage_records.columns)
LEAF_COLUMN: Final = USAGE_COLUMNS.index("leaf_index")

rate_buckets = sa.Table(
    "rate_buckets",
    SQLModel.metadata,
    sa.Column("key", sa.String(512), nullable=False),
    sa.Column("tokens", sa.Float, nullable=False),
    sa.Column("updated_us", sa.BigInteger, nullable=False),
    sa.Column("granted", sa.SmallInteger, nullable=False),
    sa.PrimaryKeyConstraint("key", name="pk_rate_buckets"),
)

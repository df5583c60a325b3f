"""``broker.v1.Usage``: a buyer's invoice and a vendor's statement, from the usage records.

Thin: who may read what is :func:`broker.metering.reports.report_scope`, the queries are in
:mod:`broker.metering.reports`; this translates messages and page tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Final

import grpc
import sqlalchemy as sa

from broker._proto.broker.v1 import usage_pb2, usage_pb2_grpc
from broker.errors import InvalidArgument
from broker.metering.reports import report_scope, usage_page, usage_totals
from broker.server.context import current_principal

_MAX_TOKEN_CHARS: Final = 20


class UsageServicer(usage_pb2_grpc.UsageServicer):
    """The Usage service over the broker's database."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    def Report(  # noqa: N802 - the proto fixes gRPC method names
        self, request: usage_pb2.UsageReportRequest, context: grpc.ServicerContext
    ) -> usage_pb2.UsageReportResponse:
        """One page of a month's records and the month's totals, for a caller allowed them."""
        scope = report_scope(current_principal(), request.month, request.tenant, request.vendor)
        rows, cursor = usage_page(
            self._engine,
            scope,
            page_size=request.page_size,
            after_leaf=_after(request.page_token),
        )
        return usage_pb2.UsageReportResponse(
            records=[
                usage_pb2.UsageRecord(
                    **{k: v for k, v in dataclasses.asdict(row).items() if k != "month"}
                )
                for row in rows
            ],
            totals=[
                usage_pb2.UsageTotal(**dataclasses.asdict(total))
                for total in usage_totals(self._engine, scope)
            ],
            next_page_token="" if cursor is None else str(cursor),
        )


def _after(token: str) -> int:
    """The leaf index a page token carries (-1 for the first page)."""
    if not token:
        return -1
    if len(token) > _MAX_TOKEN_CHARS or not token.isdigit():
        raise InvalidArgument("page_token is not one this service returned; start without it")
    return int(token)

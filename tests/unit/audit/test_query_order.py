"""Query order across pages: the database sorts, keyset cursors continue in that order."""

from __future__ import annotations

import pytest

from broker.audit.query import AuditFilter, Order, encode_cursor, query_page
from broker.audit.writer import AuditLog
from broker.errors import InvalidArgument
from tests.unit.audit.conftest import make_intent

#: Entry times in leaf order: out of order, with ties, as replicas can stamp them.
TIMES = [50, 30, 30, 90, 10, 70, 30, 20, 60]


@pytest.fixture
def filled(audit_log: AuditLog) -> AuditLog:
    for i, time_us in enumerate(TIMES):
        audit_log.append(make_intent(tenant="acme" if i != 4 else "globex", time_us=time_us))
    audit_log.checkpoint_now()
    return audit_log


def _all_pages(log: AuditLog, flt: AuditFilter, order: Order, size: int) -> list[int]:
    leaves: list[int] = []
    cursor = ""
    for _ in range(len(TIMES) + 1):
        rows, cursor = query_page(log.store.engine, flt, page_size=size, cursor=cursor, order=order)
        leaves.extend(r.leaf_index for r in rows)
        if not cursor:
            return leaves
    raise AssertionError("paging never ended")


def _by_time(leaves: list[int], *, descending: bool) -> list[int]:
    return sorted(leaves, key=lambda i: (TIMES[i], i), reverse=descending)


@pytest.mark.parametrize("size", [1, 2, 4, 100])
def test_every_order_holds_across_pages(filled: AuditLog, size: int) -> None:
    everything = list(range(len(TIMES)))
    acme = [i for i in everything if i != 4]
    for flt, leaves in ((AuditFilter(), everything), (AuditFilter(tenant="acme"), acme)):
        assert _all_pages(filled, flt, Order.OLDEST_FIRST, size) == leaves
        assert _all_pages(filled, flt, Order.NEWEST_FIRST, size) == leaves[::-1]
        assert _all_pages(filled, flt, Order.TIME_ASCENDING, size) == _by_time(
            leaves, descending=False
        )
        assert _all_pages(filled, flt, Order.TIME_DESCENDING, size) == _by_time(
            leaves, descending=True
        )


def test_a_cursor_is_bound_to_its_order(filled: AuditLog) -> None:
    engine = filled.store.engine
    _, cursor = query_page(engine, AuditFilter(), page_size=2, order=Order.NEWEST_FIRST)
    assert cursor
    for other in (Order.OLDEST_FIRST, Order.TIME_DESCENDING):
        with pytest.raises(InvalidArgument, match="other filters or order"):
            query_page(engine, AuditFilter(), page_size=2, cursor=cursor, order=other)


def test_cursors_of_the_log_order_keep_working(filled: AuditLog) -> None:
    # A cursor made before orders existed ({"after", "f"}) continues the oldest-first order.
    cursor = encode_cursor(AuditFilter(), 5)
    rows, _ = query_page(filled.store.engine, AuditFilter(), cursor=cursor)
    assert [r.leaf_index for r in rows] == [6, 7, 8]


def test_start_index_goes_only_with_the_oldest_first_order(filled: AuditLog) -> None:
    with pytest.raises(InvalidArgument, match="start_index"):
        query_page(filled.store.engine, AuditFilter(), start_index=3, order=Order.NEWEST_FIRST)

"""Query strings <-> audit filters: what a shared console URL means."""

from __future__ import annotations

from urllib.parse import parse_qs

import pytest

from broker._proto.broker.v1 import audit_pb2
from broker.console.search import Search, SearchError, sort_entries


def test_every_filter_reaches_the_broker_filter() -> None:
    search = Search.from_query(
        {
            "tenant": "acme",
            "subject": "svc",
            "model": "v/m@1",
            "kind": "call.intent",
            "outcome": "OK",
            "revision": "sha256:ab",
            "label": "pii.email",
            "action": "redact",
            "call_id": "c1",
            "from": "2026-12-01",
            "to": "2026-12-01",
        }
    )
    flt = search.to_filter()
    assert (flt.tenant, flt.subject, flt.model, flt.kind) == ("acme", "svc", "v/m@1", "call.intent")
    assert (flt.status, flt.policy_revision, flt.label, flt.action) == (
        "OK",
        "sha256:ab",
        "pii.email",
        "redact",
    )
    assert flt.call_id == "c1"
    assert flt.time_from_us == 1_796_083_200_000_000
    assert flt.time_to_us - flt.time_from_us == 86_400_000_000  # a bare "to" date is inclusive


def test_calls_without_an_outcome_is_a_flag_kept_in_links() -> None:
    search = Search.from_query({"no_outcome": "1", "tenant": "acme"})
    assert search.to_filter().without_outcome
    assert parse_qs(search.query_string(page="x"))["no_outcome"] == ["1"]
    assert not Search.from_query({"tenant": "acme"}).to_filter().without_outcome
    with pytest.raises(SearchError, match="no_outcome is 1"):
        Search.from_query({"no_outcome": "yes"})


def test_times_with_minutes_and_bad_values() -> None:
    flt = Search.from_query({"from": "2026-12-01T10:30"}).to_filter()
    assert flt.time_from_us == 1_796_083_200_000_000 + (10 * 3600 + 1800) * 1_000_000
    for bad in ({"from": "yesterday"}, {"size": "7"}, {"sort": "payload"}, {"tenant": "x" * 400}):
        with pytest.raises(SearchError):
            Search.from_query(bad)


def test_urls_keep_filters_page_and_sort() -> None:
    search = Search.from_query({"tenant": "acme", "sort": "-time", "size": "25", "page": "abc"})
    params = parse_qs(search.query_string())
    assert params == {"tenant": ["acme"], "size": ["25"], "sort": ["-time"], "page": ["abc"]}
    assert "page" not in parse_qs(search.query_string(page=""))
    assert parse_qs(search.sort_link("time"))["sort"] == ["time"]  # toggles the direction
    assert parse_qs(search.sort_link("tenant"))["sort"] == ["tenant"]


def test_sorting_a_page() -> None:
    entries = [
        audit_pb2.AuditEntry(leaf_index=i, time_us=t, tenant=n)
        for i, t, n in ((0, 30, "b"), (1, 10, "a"), (2, 20, "b"))
    ]
    sort_entries(entries, "time", descending=False)
    assert [e.leaf_index for e in entries] == [1, 2, 0]
    sort_entries(entries, "tenant", descending=True)
    assert [e.leaf_index for e in entries] == [2, 0, 1]


def test_leaf_and_time_sorts_are_done_by_the_broker_across_pages() -> None:
    orders = {
        "leaf": audit_pb2.QUERY_ORDER_OLDEST_FIRST,
        "-leaf": audit_pb2.QUERY_ORDER_NEWEST_FIRST,
        "time": audit_pb2.QUERY_ORDER_TIME_ASCENDING,
        "-time": audit_pb2.QUERY_ORDER_TIME_DESCENDING,
    }
    for sort, order in orders.items():
        search = Search.from_query({"sort": sort})
        assert search.sorted_by_server and search.server_order() == order
    tenant = Search.from_query({"sort": "-tenant"})
    assert not tenant.sorted_by_server
    assert tenant.server_order() == audit_pb2.QUERY_ORDER_OLDEST_FIRST
    # A new sort starts from the first page: a page token is bound to its order.
    paged = Search.from_query({"sort": "leaf", "page": "abc"})
    assert "page" not in parse_qs(paged.sort_link("leaf"))

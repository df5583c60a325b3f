"""Search parameters: the query string of a console URL <-> the broker's ``AuditFilter``.

Every search is a plain GET with its filters in the query string, so a search (and its page and
sort order) is a link an officer can share; the receiving officer's own rights decide what the
link shows. Times are UTC, as ``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM`` (what a date-time input
sends); ``to`` is exclusive, and a bare date as ``to`` means the end of that day.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final
from urllib.parse import urlencode

from broker._proto.broker.v1 import audit_pb2

#: Query-string name -> AuditFilter field, for the plain text filters.
TEXT_FILTERS: Final = {
    "tenant": "tenant",
    "subject": "subject",
    "model": "model",
    "kind": "kind",
    "outcome": "status",
    "revision": "policy_revision",
    "label": "label",
    "action": "action",
    "call_id": "call_id",
}
#: Query-string name of the "calls without an outcome" filter (``AuditFilter.without_outcome``):
#: call intents whose outcome is not on the log, e.g. after a serving process died.
NO_OUTCOME: Final = "no_outcome"
SORT_KEYS: Final = ("leaf", "time", "tenant", "subject", "model", "kind", "status")
#: Sorts the broker does across every page (``QueryEntriesRequest.order``); the other columns
#: are sorted within the page shown.
SERVER_ORDERS: Final = {
    ("leaf", False): audit_pb2.QUERY_ORDER_OLDEST_FIRST,
    ("leaf", True): audit_pb2.QUERY_ORDER_NEWEST_FIRST,
    ("time", False): audit_pb2.QUERY_ORDER_TIME_ASCENDING,
    ("time", True): audit_pb2.QUERY_ORDER_TIME_DESCENDING,
}
PAGE_SIZES: Final = (25, 50, 100, 250)
_MAX_TEXT: Final = 320


class SearchError(ValueError):
    """A query-string value the console cannot turn into a filter."""


def _parse_time(text: str, *, end: bool) -> int:
    """Microseconds since the epoch for a UTC date or date-time; ``end``: a date's end."""
    for fmt in ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            moment = datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
        if fmt == "%Y-%m-%d" and end:
            moment += timedelta(days=1)
        return int(moment.timestamp()) * 1_000_000
    raise SearchError(f"time {text[:32]!r} is not YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC)")


@dataclass(frozen=True, slots=True)
class Search:
    """One search as the officer asked for it (strings, as in the URL)."""

    values: Mapping[str, str] = field(default_factory=dict)
    page_token: str = ""
    page_size: int = 50
    sort: str = "leaf"
    descending: bool = False

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> Search:
        """Parse a query string; SearchError for values that cannot be a filter."""
        values = {}
        for name in (*TEXT_FILTERS, "from", "to"):
            value = query.get(name, "").strip()
            if len(value) > _MAX_TEXT:
                raise SearchError(f"{name} is longer than {_MAX_TEXT} characters")
            if value:
                values[name] = value
        no_outcome = query.get(NO_OUTCOME, "")
        if no_outcome not in ("", "1"):
            raise SearchError(f"{NO_OUTCOME} is 1 (calls without an outcome) or absent")
        if no_outcome:
            values[NO_OUTCOME] = no_outcome
        size_text = query.get("size", "50")
        if not size_text.isdigit() or int(size_text) not in PAGE_SIZES:
            raise SearchError(f"size must be one of {', '.join(map(str, PAGE_SIZES))}")
        sort = query.get("sort", "leaf")
        descending = sort.startswith("-")
        if sort.lstrip("-") not in SORT_KEYS:
            raise SearchError(f"sort must be one of {', '.join(SORT_KEYS)} (- for descending)")
        search = cls(values, query.get("page", ""), int(size_text), sort.lstrip("-"), descending)
        search.to_filter()  # fail early on bad times
        return search

    def to_filter(self) -> audit_pb2.AuditFilter:
        """The broker's filter for this search."""
        flt = audit_pb2.AuditFilter()
        for name, attr in TEXT_FILTERS.items():
            if name in self.values:
                setattr(flt, attr, self.values[name])
        if "from" in self.values:
            flt.time_from_us = _parse_time(self.values["from"], end=False)
        if "to" in self.values:
            flt.time_to_us = _parse_time(self.values["to"], end=True)
        flt.without_outcome = NO_OUTCOME in self.values
        return flt

    def server_order(self) -> audit_pb2.QueryOrder.ValueType:
        """The order the broker pages in: this sort if it is one the broker does, else the log's."""
        return SERVER_ORDERS.get((self.sort, self.descending), audit_pb2.QUERY_ORDER_OLDEST_FIRST)

    @property
    def sorted_by_server(self) -> bool:
        """True if the broker sorts across pages; False if only the page shown is sorted."""
        return (self.sort, self.descending) in SERVER_ORDERS

    def query_string(self, **changes: str) -> str:
        """This search as a query string, with some parameters changed ("" removes one)."""
        params: dict[str, str] = dict(self.values)
        params["size"] = str(self.page_size)
        params["sort"] = ("-" if self.descending else "") + self.sort
        if self.page_token:
            params["page"] = self.page_token
        params.update(changes)
        return urlencode({k: v for k, v in params.items() if v})

    def sort_link(self, key: str) -> str:
        """Query string that sorts by ``key`` (toggling the direction if already sorted by it).

        It starts again from the first page: a page token is bound to the order it was made in.
        """
        descending = key == self.sort and not self.descending
        return self.query_string(sort=("-" if descending else "") + key, page="")


def sort_entries(entries: list[audit_pb2.AuditEntry], key: str, descending: bool) -> None:
    """Sort one page in place by a column (for the columns the broker does not sort by)."""
    attr = {"leaf": "leaf_index", "time": "time_us"}.get(key, key)
    entries.sort(key=lambda e: (getattr(e, attr), e.leaf_index), reverse=descending)

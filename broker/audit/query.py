"""Compliance queries over the log: filters on the denormalised columns, keyset paging.

Queries read the copies of entry fields stored beside each entry (``broker.audit.tables``), but
what they return is the entry's own bytes and leaf index, so anything shown to a compliance
officer can be proven against a checkpoint. Paging is keyset paging in the query's
:class:`Order` (leaf index, or entry time with the leaf index breaking ties), so entries
appended while someone pages neither repeat nor shift. A cursor is bound to its filter and
order: reusing it with others is refused instead of silently skipping entries.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from broker.audit.entry import KIND_INTENT, KIND_OUTCOME
from broker.audit.tables import audit_entries
from broker.errors import InvalidArgument

_REVISION: Final = re.compile(r"[A-Za-z0-9:.-]{1,128}")
DEFAULT_PAGE_SIZE: Final = 100
MAX_PAGE_SIZE: Final = 1000


class Order(enum.Enum):
    """The order a query returns entries in, done by the database across all pages.

    The log's own order (leaf index) is what the tree commits to; an entry's time is stamped
    when the call happens and sequencing follows shortly after, so the two orders differ only
    for entries a few moments apart, which the time orders settle by time.
    """

    OLDEST_FIRST = "leaf"
    NEWEST_FIRST = "-leaf"
    TIME_ASCENDING = "time"
    TIME_DESCENDING = "-time"

    @property
    def descending(self) -> bool:
        """True for the newest-first orders."""
        return self.value.startswith("-")

    @property
    def by_time(self) -> bool:
        """True if the order is by entry time (ties by leaf index)."""
        return self.value.endswith("time")


@dataclass(frozen=True, slots=True)
class _Position:
    """Where a page ended: its last leaf and (for the time orders) that entry's time."""

    leaf: int
    time_us: int = 0


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """What to select; ``None`` means "any". Times are microseconds, ``[time_from, time_to)``.

    ``tenant`` is forced by the service for callers who may see only their own tenant.
    ``below_size`` keeps only leaves ``< below_size`` (an export pinned to a checkpoint).
    ``without_outcome`` keeps only ``call.intent`` entries whose call has no ``call.outcome``
    entry (within ``below_size`` when that is set): calls in flight, or left without an outcome
    by a process that stopped or died.
    """

    tenant: str | None = None
    subject: str | None = None
    model: str | None = None
    vendor: str | None = None
    status: str | None = None
    action: str | None = None
    label: str | None = None
    call_id: str | None = None
    kind: str | None = None
    time_from_us: int | None = None
    time_to_us: int | None = None
    policy_revision: str | None = None
    leaf_index: int | None = None
    below_size: int | None = None
    without_outcome: bool | None = None

    def is_empty(self) -> bool:
        """True if nothing is filtered out (apart from ``below_size``)."""
        return all(
            getattr(self, f.name) is None
            for f in dataclasses.fields(self)
            if f.name != "below_size"
        )

    def as_dict(self) -> dict[str, Any]:
        """The filters that are set, for export manifests and cursor binding."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """One entry as stored: its leaf index, canonical bytes, leaf hash and query columns."""

    leaf_index: int
    entry: bytes
    entry_hash: bytes
    time_us: int
    kind: str
    tenant: str
    subject: str
    call_id: str
    model: str
    vendor: str
    status: str


def _where(flt: AuditFilter) -> list[sa.ColumnElement[bool]]:
    c = audit_entries.c
    clauses: list[sa.ColumnElement[bool]] = []
    for name in ("tenant", "subject", "model", "vendor", "status", "call_id", "kind"):
        value = getattr(flt, name)
        if value is not None:
            clauses.append(c[name] == value)
    if flt.action is not None:
        clauses.append(c.actions.contains(f",{flt.action},", autoescape=True))
    if flt.label is not None:
        clauses.append(c.labels.contains(f",{flt.label},", autoescape=True))
    if flt.policy_revision is not None:
        needle = sa.literal(_revision_needle(flt.policy_revision), sa.LargeBinary())
        clauses.append(_BytePosition(c.entry, needle) > 0)
    if flt.time_from_us is not None:
        clauses.append(c.time_us >= flt.time_from_us)
    if flt.time_to_us is not None:
        clauses.append(c.time_us < flt.time_to_us)
    if flt.leaf_index is not None:
        clauses.append(c.leaf_index == flt.leaf_index)
    if flt.below_size is not None:
        clauses.append(c.leaf_index < flt.below_size)
    if flt.without_outcome:
        clauses.extend(_without_outcome(flt.below_size))
    return clauses


def _without_outcome(below_size: int | None) -> list[sa.ColumnElement[bool]]:
    """Intents with no outcome of the same call (looked up by ``ix_audit_entries_call_id``)."""
    outcome = audit_entries.alias("outcome")
    found = [outcome.c.call_id == audit_entries.c.call_id, outcome.c.kind == KIND_OUTCOME]
    if below_size is not None:
        found.append(outcome.c.leaf_index < below_size)
    return [audit_entries.c.kind == KIND_INTENT, ~sa.exists().where(*found)]


def filter_clauses(flt: AuditFilter) -> list[sa.ColumnElement[bool]]:
    """The WHERE clauses of ``flt`` over ``audit_entries`` (for aggregates over the same rows)."""
    return _where(flt)


def _revision_needle(revision: str) -> bytes:
    """The exact bytes ``"policy_revision":"<rev>"`` has in a canonical entry.

    The revision has no column of its own, so the entry bytes are searched for this needle, and
    the match is exact: in canonical JSON an unescaped ``"`` is structure, never string content,
    so the needle can only be that member. Revisions (``sha256:<hex>``) outside
    ``[A-Za-z0-9:.-]`` cannot exist and are refused.
    """
    if not _REVISION.fullmatch(revision):
        raise InvalidArgument("policy_revision must match [A-Za-z0-9:.-]{1,128}")
    return b'"policy_revision":"' + revision.encode("ascii") + b'"'


class _BytePosition(sa.sql.functions.GenericFunction[int]):
    """1-based position of ``needle`` in a binary column, 0 if absent (SQLite and PostgreSQL)."""

    type = sa.Integer()
    inherit_cache = True
    name = "instr"


@compiles(_BytePosition, "postgresql")
def _position_pg(element: _BytePosition, compiler: SQLCompiler, **kw: Any) -> str:
    haystack, needle = list(element.clauses)
    return f"position({compiler.process(needle, **kw)} in {compiler.process(haystack, **kw)})"


def _binding(flt: AuditFilter, order: Order) -> str:
    bound: dict[str, Any] = flt.as_dict()
    if order is not Order.OLDEST_FIRST:  # the default order keeps the cursors made before it
        bound["order"] = order.value
    text = json.dumps(bound, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_cursor(
    flt: AuditFilter, after: int, order: Order = Order.OLDEST_FIRST, time_us: int = 0
) -> str:
    """An opaque cursor: continue after leaf ``after`` (at ``time_us``) in the same query."""
    data: dict[str, Any] = {"after": after, "f": _binding(flt, order)}
    if order.by_time:
        data["t"] = time_us
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii")


def decode_cursor(flt: AuditFilter, cursor: str, order: Order = Order.OLDEST_FIRST) -> int:
    """The leaf index a cursor continues after (-1 for ""); InvalidArgument if it is not ours."""
    return _decode(flt, cursor, order).leaf if cursor else -1


def _decode(flt: AuditFilter, cursor: str, order: Order) -> _Position:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
        after, binding = data["after"], data["f"]
        time_us = data.get("t", 0) if order.by_time else 0
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeEncodeError) as exc:
        raise InvalidArgument("page cursor is malformed") from exc
    for value in (after, time_us):
        if not isinstance(value, int) or isinstance(value, bool) or value < -1:
            raise InvalidArgument("page cursor is malformed")
    if binding != _binding(flt, order):
        raise InvalidArgument("page cursor belongs to a query with other filters or order")
    return _Position(after, time_us)


def query_page(
    engine: sa.Engine,
    flt: AuditFilter,
    *,
    page_size: int = 0,
    cursor: str = "",
    start_index: int = 0,
    order: Order = Order.OLDEST_FIRST,
) -> tuple[list[StoredEntry], str]:
    """One page in ``order`` and the cursor of the next ("" when there is none).

    Without a cursor the page starts at leaf ``start_index`` (oldest-first order only): a
    follower that has seen every leaf below it asks from there, statelessly, across reconnects
    and broker restarts.
    """
    if page_size < 0:
        raise InvalidArgument("page_size must not be negative")
    if start_index < 0:
        raise InvalidArgument("start_index must not be negative")
    if start_index and order is not Order.OLDEST_FIRST:
        raise InvalidArgument("start_index goes only with the oldest-first order")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    after: _Position | None
    if cursor:
        after = _decode(flt, cursor, order)
    elif order is Order.OLDEST_FIRST:
        after = _Position(start_index - 1)
    else:
        after = None
    rows = _select(engine, flt, after, size + 1, order)
    if len(rows) > size:
        rows = rows[:size]
        return rows, encode_cursor(flt, rows[-1].leaf_index, order, rows[-1].time_us)
    return rows, ""


def iter_entries(engine: sa.Engine, flt: AuditFilter, *, batch: int = 500) -> Iterator[StoredEntry]:
    """Every matching entry in leaf order, read in batches (for exports and streams)."""
    after = -1
    while True:
        rows = _select(engine, flt, _Position(after), batch, Order.OLDEST_FIRST)
        yield from rows
        if len(rows) < batch:
            return
        after = rows[-1].leaf_index


def _keyset(
    after: _Position | None, order: Order
) -> tuple[list[sa.ColumnElement[bool]], list[Any]]:
    """The WHERE clause past ``after`` and the ORDER BY, for ``order``."""
    c = audit_entries.c
    leaf = c.leaf_index.desc() if order.descending else c.leaf_index.asc()
    if not order.by_time:
        if after is None:
            return [], [leaf]
        past = c.leaf_index < after.leaf if order.descending else c.leaf_index > after.leaf
        return [past], [leaf]
    time = c.time_us.desc() if order.descending else c.time_us.asc()
    if after is None:
        return [], [time, leaf]
    if order.descending:
        past = sa.or_(
            c.time_us < after.time_us,
            sa.and_(c.time_us == after.time_us, c.leaf_index < after.leaf),
        )
    else:
        past = sa.or_(
            c.time_us > after.time_us,
            sa.and_(c.time_us == after.time_us, c.leaf_index > after.leaf),
        )
    return [past], [time, leaf]


def _select(
    engine: sa.Engine, flt: AuditFilter, after: _Position | None, limit: int, order: Order
) -> list[StoredEntry]:
    c = audit_entries.c
    past, order_by = _keyset(after, order)
    query = (
        sa.select(
            c.leaf_index,
            c.entry,
            c.entry_hash,
            c.time_us,
            c.kind,
            c.tenant,
            c.subject,
            c.call_id,
            c.model,
            c.vendor,
            c.status,
        )
        .where(*past, *_where(flt))
        .order_by(*order_by)
        .limit(limit)
    )
    with engine.connect() as conn:
        return [
            StoredEntry(
                int(r.leaf_index),
                bytes(r.entry),
                bytes(r.entry_hash),
                int(r.time_us),
                r.kind,
                r.tenant,
                r.subject,
                r.call_id,
                r.model,
                r.vendor,
                r.status,
            )
            for r in conn.execute(query)
        ]

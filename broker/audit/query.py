"""Compliance queries over the log: filters on the denormalised columns, keyset paging.

Queries read the copies of entry fields stored beside each entry (``broker.audit.tables``), but
what they return is the entry's own bytes and leaf index, so anything shown to a compliance
officer can be proven against a checkpoint. Paging is by leaf index (keyset), so entries
appended while someone pages neither repeat nor shift. A cursor is bound to its filter: reusing
it with other filters is refused instead of silently skipping entries.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from broker.audit.tables import audit_entries
from broker.errors import InvalidArgument

_REVISION: Final = re.compile(r"[A-Za-z0-9:.-]{1,128}")
DEFAULT_PAGE_SIZE: Final = 100
MAX_PAGE_SIZE: Final = 1000


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """What to select; ``None`` means "any". Times are microseconds, ``[time_from, time_to)``.

    ``tenant`` is forced by the service for callers who may see only their own tenant.
    ``below_size`` keeps only leaves ``< below_size`` (an export pinned to a checkpoint).
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
    return clauses


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


def _binding(flt: AuditFilter) -> str:
    text = json.dumps(flt.as_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_cursor(flt: AuditFilter, after: int) -> str:
    """An opaque cursor: continue after leaf ``after`` with the same filter."""
    raw = json.dumps({"after": after, "f": _binding(flt)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii")


def decode_cursor(flt: AuditFilter, cursor: str) -> int:
    """The leaf index a cursor continues after (-1 for ""); InvalidArgument if it is not ours."""
    if not cursor:
        return -1
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
        after, binding = data["after"], data["f"]
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeEncodeError) as exc:
        raise InvalidArgument("page cursor is malformed") from exc
    if not isinstance(after, int) or isinstance(after, bool) or after < -1:
        raise InvalidArgument("page cursor is malformed")
    if binding != _binding(flt):
        raise InvalidArgument("page cursor belongs to a query with other filters")
    return after


def query_page(
    engine: sa.Engine,
    flt: AuditFilter,
    *,
    page_size: int = 0,
    cursor: str = "",
    start_index: int = 0,
) -> tuple[list[StoredEntry], str]:
    """One page in leaf order and the cursor of the next ("" when there is none).

    Without a cursor the page starts at leaf ``start_index``: a follower that has seen every
    leaf below it asks from there, statelessly, across reconnects and broker restarts.
    """
    if page_size < 0:
        raise InvalidArgument("page_size must not be negative")
    if start_index < 0:
        raise InvalidArgument("start_index must not be negative")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    after = decode_cursor(flt, cursor) if cursor else start_index - 1
    rows = _select(engine, flt, after, size + 1)
    if len(rows) > size:
        rows = rows[:size]
        return rows, encode_cursor(flt, rows[-1].leaf_index)
    return rows, ""


def iter_entries(engine: sa.Engine, flt: AuditFilter, *, batch: int = 500) -> Iterator[StoredEntry]:
    """Every matching entry in leaf order, read in batches (for exports and streams)."""
    after = -1
    while True:
        rows = _select(engine, flt, after, batch)
        yield from rows
        if len(rows) < batch:
            return
        after = rows[-1].leaf_index


def _select(engine: sa.Engine, flt: AuditFilter, after: int, limit: int) -> list[StoredEntry]:
    c = audit_entries.c
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
        .where(c.leaf_index > after, *_where(flt))
        .order_by(c.leaf_index)
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

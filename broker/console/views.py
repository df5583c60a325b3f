"""What the entry and chart pages show, computed from entries and retention records.

Pure functions over protobuf messages, so they are tested without a browser or a broker.
Entries hold commitments only (labels, actions, digests), never payload values, and nothing
here adds any.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from broker._proto.broker.v1 import audit_pb2, retention_pb2


def utc(time_us: int) -> str:
    """An entry time as ``YYYY-MM-DD HH:MM:SS UTC``."""
    return datetime.fromtimestamp(time_us / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def body_of(entry: audit_pb2.AuditEntry) -> dict[str, Any]:
    """The entry's JSON object (the bytes the tree commits to); {} if they are not an object."""
    try:
        body = json.loads(entry.entry)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


@dataclass(frozen=True, slots=True)
class RecordState:
    """One retained record named by an entry, and where it stands."""

    record_id: str
    state: str  # "held", "due", "retained", "deleted", "unknown"
    detail: str
    receipt_leaf: int | None = None


def record_ids(body: Mapping[str, Any]) -> list[str]:
    """Retained record ids an entry names (an outcome's list, an intent's one id)."""
    ids = body.get("retained_record_ids") or []
    if body.get("retention_id"):
        ids = [*ids, body["retention_id"]]
    return [str(i) for i in ids if isinstance(i, str) and i]


def record_states(
    ids: Iterable[str],
    records: Iterable[retention_pb2.RetainedRecord],
    receipts: Mapping[str, audit_pb2.AuditEntry],
    now: datetime,
) -> list[RecordState]:
    """State of each record: held, due (pending deletion), retained until, or deleted."""
    by_id = {r.record_id: r for r in records}
    states = []
    for record_id in dict.fromkeys(ids):
        record = by_id.get(record_id)
        if record is not None:
            due = record.due_time.ToDatetime(tzinfo=UTC)
            kind = "request" if record.kind == retention_pb2.PAYLOAD_KIND_REQUEST else "response"
            if record.held or record.tenant_held:
                why = "record hold" if record.held else "tenant hold"
                states.append(
                    RecordState(record_id, "held", f"{kind}; {why}; due {due:%Y-%m-%d %H:%M} UTC")
                )
            elif due <= now:
                states.append(
                    RecordState(record_id, "due", f"{kind}; due since {due:%Y-%m-%d %H:%M} UTC")
                )
            else:
                states.append(
                    RecordState(record_id, "retained", f"{kind}; until {due:%Y-%m-%d %H:%M} UTC")
                )
            continue
        receipt = receipts.get(record_id)
        if receipt is not None:
            details = body_of(receipt).get("details", {})
            states.append(
                RecordState(
                    record_id,
                    "deleted",
                    f"deleted {details.get('done_time', '?')} ({details.get('reason', '?')}), "
                    f"key {details.get('key_id', '?')} destroyed",
                    receipt.leaf_index,
                )
            )
        else:
            states.append(RecordState(record_id, "unknown", "not listed and no deletion receipt"))
    return states


@dataclass(frozen=True, slots=True)
class EntityCount:
    """The entities of one label inside a field: the action and how many (None: not recorded,
    as in entries written before counts were)."""

    label: str
    action: str
    count: int | None


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """One field of the decisions table: path, labels, action, and its entities' counts."""

    path: str
    labels: list[str]
    action: str
    entities: list[EntityCount]


def _is_entity_row(item: Mapping[str, Any]) -> bool:
    return str(item.get("action", "")).startswith("entity.")


def decision_rows(fields: Iterable[Mapping[str, Any]]) -> list[DecisionRow]:
    """An entry's ``fields`` as one row per field, each with the entity rows of its path."""
    rows: dict[str, DecisionRow] = {}
    for item in fields:
        path = str(item.get("path", ""))
        row = rows.get(path)
        if _is_entity_row(item):
            if row is None:
                row = rows[path] = DecisionRow(path, [], "", [])
            count = item.get("count")
            row.entities.append(
                EntityCount(
                    ", ".join(str(label) for label in item.get("labels") or []),
                    str(item["action"]).removeprefix("entity."),
                    count if isinstance(count, int) and not isinstance(count, bool) else None,
                )
            )
        elif row is None or row.action:
            rows[path] = DecisionRow(
                path, [str(label) for label in item.get("labels") or []], str(item["action"]), []
            )
        else:  # an entity row came first: this is its field's own row
            rows[path] = DecisionRow(
                path,
                [str(label) for label in item.get("labels") or []],
                str(item.get("action", "")),
                row.entities,
            )
    return list(rows.values())


def label_counts(fields: Iterable[Mapping[str, Any]]) -> list[tuple[str, str, int]]:
    """(label, action, number of fields) over an entry's per-field decisions."""
    counts: Counter[tuple[str, str]] = Counter()
    for item in fields:
        if _is_entity_row(item):
            continue
        for label in item.get("labels") or ["(none)"]:
            counts[(str(label), str(item.get("action", "")))] += 1
    return sorted((label, action, n) for (label, action), n in counts.items())


def entity_counts(fields: Iterable[Mapping[str, Any]]) -> list[tuple[str, str, int | None]]:
    """(label, action, number of entities) summed over an entry's fields; None if the entry
    names entities of that label and action without their count (an older entry)."""
    counts: dict[tuple[str, str], int | None] = {}
    for row in decision_rows(fields):
        for entity in row.entities:
            key = (entity.label, entity.action)
            before = counts.get(key, 0)
            counts[key] = None if before is None or entity.count is None else before + entity.count
    return sorted((label, action, n) for (label, action), n in counts.items())


def chart_data(counts: audit_pb2.AggregateResponse) -> dict[str, Any]:
    """The data of the chart page, from the broker's counts (``Audit/Aggregate``)."""
    calls: dict[str, Counter[str]] = defaultdict(Counter)
    for group in counts.calls_by_day_outcome:
        day, status = group.keys
        calls[day][status or "?"] += group.count
    actions: dict[str, Counter[str]] = defaultdict(Counter)
    for group in counts.fields_by_label_action:
        label, action = group.keys
        actions[label][action] += group.count
    deletions: dict[str, Counter[str]] = defaultdict(Counter)
    for group in counts.deletions_due_by_day:
        deletions[group.keys[0]]["due"] += group.count
    for group in counts.deletions_done_by_day:
        deletions[group.keys[0]]["done"] += group.count
    for row in deletions.values():  # both series on every day, so the bars line up
        row["due"] += 0
        row["done"] += 0
    return {
        "calls_by_outcome": _stacked(calls),
        "actions_by_label": _stacked(actions),
        "denials_by_reason": _simple((g.keys[0], g.count) for g in counts.failures_by_reason),
        "deletions": _stacked(deletions),
        "calls_by_tenant_model": _simple(
            (f"{g.keys[0]} \N{MIDDLE DOT} {g.keys[1]}", g.count)
            for g in counts.calls_by_tenant_model
        ),
        "entries": counts.entries,
    }


def _simple(groups: Iterable[tuple[str, int]]) -> dict[str, Any]:
    """Labels and values, in the broker's order (largest first)."""
    pairs = list(groups)
    return {"labels": [k for k, _ in pairs], "values": [n for _, n in pairs]}


def _stacked(table: Mapping[str, Counter[str]]) -> dict[str, Any]:
    """Rows sorted, one series per column: the shape a stacked bar chart takes."""
    rows = sorted(table)
    columns = sorted({c for counter in table.values() for c in counter})
    return {
        "labels": rows,
        "series": [{"name": c, "values": [table[r][c] for r in rows]} for c in columns],
    }

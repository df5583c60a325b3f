"""Usage rows ride with their outcome entries: same transaction, the entry's leaf, its time."""

from __future__ import annotations

import threading
from dataclasses import replace

import orjson
import pytest
import sqlalchemy as sa

from broker.audit.store import AuditStore
from broker.audit.writer import AuditLog
from broker.metering.records import (
    count_scalars,
    meter,
    month_of,
    tokens_of,
    usage_companion,
)
from broker.metering.tables import usage_records
from broker.registry.pricing import Pricing, Units
from tests.unit.audit.conftest import make_intent

PRICE = Pricing(currency="USD", per_call_micros=10, per_tensor_element_micros=1)


def _outcome(log: AuditLog, call_id: str, elements: int) -> int:
    metered = meter(PRICE, Units(calls=1, tensor_elements=elements), bytes_in=5, bytes_out=7)

    def rows(time_us: int) -> tuple[object, ...]:
        return (
            usage_companion(
                metered,
                time_us=time_us,
                call_id=call_id,
                tenant="acme",
                subject="acme-svc",
                vendor="v",
                model="v/m@1",
                status="OK",
            ),
        )

    receipt = log.record_call_outcome(
        call_id=call_id,
        tenant="acme",
        subject="acme-svc",
        model="v/m@1",
        vendor="v",
        intent_index=None,
        status="OK",
        latency_us=1,
        response=b"{}",
        metering=metered.as_audit(),
        companions_at=rows,  # type: ignore[arg-type]
    )
    return receipt.leaf_index


def test_each_row_names_its_own_entrys_leaf_in_concurrent_batches(
    audit_log: AuditLog, engine: sa.Engine
) -> None:
    leaves: dict[str, int] = {}
    lock = threading.Lock()

    def call(n: int) -> None:
        leaf = _outcome(audit_log, f"call-{n}", n)
        with lock:
            leaves[f"call-{n}"] = leaf

    threads = [threading.Thread(target=call, args=(n,)) for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with engine.connect() as conn:
        rows = conn.execute(sa.select(usage_records)).all()
        entries = {
            int(leaf): bytes(entry)
            for leaf, entry in conn.execute(sa.text("SELECT leaf_index, entry FROM audit_entries"))
        }
    assert {r.call_id: r.leaf_index for r in rows} == leaves
    for row in rows:
        body = orjson.loads(bytes(entries[row.leaf_index]))
        assert body["call_id"] == row.call_id
        assert body["time_us"] == row.time_us
        assert month_of(body["time_us"]) == row.month
        assert body["metering"]["cost_micros"] == row.cost_micros == 10 + row.tensor_elements


def test_a_row_that_cannot_be_written_takes_its_entry_with_it(
    audit_log: AuditLog, engine: sa.Engine
) -> None:
    _outcome(audit_log, "call-dup", 1)
    size = audit_log.store.size()
    with pytest.raises(Exception, match="audit log cannot be written"):
        _outcome(audit_log, "call-dup", 1)  # the same call id twice: the usage key refuses it
    assert audit_log.store.size() == size


def test_a_direct_append_fills_the_leaf_by_entry_position(engine: sa.Engine) -> None:
    store = AuditStore(engine)
    store.append([make_intent()])
    metered = meter(PRICE, Units(), bytes_in=0, bytes_out=0)
    row = usage_companion(
        metered,
        time_us=0,
        call_id="c",
        tenant="t",
        subject="s",
        vendor="v",
        model="v/m@1",
        status="OK",
    )
    receipts = store.append([make_intent(), make_intent()], [replace(row, entry_position=1)])
    with engine.connect() as conn:
        (leaf,) = conn.execute(sa.select(usage_records.c.leaf_index)).scalars().all()
    assert leaf == receipts[1].leaf_index == 2


def test_units_helpers() -> None:
    assert count_scalars({"a": [1, 2, {"b": None}], "c": "x"}) == 4
    assert tokens_of(
        {"prompt_tokens": 3, "completion_tokens": 4}, delivered_chunks=9, streamed=True
    ) == (3, 4)
    assert tokens_of(None, delivered_chunks=9, streamed=True) == (0, 9)
    assert tokens_of(None, delivered_chunks=9, streamed=False) == (0, 0)
    assert month_of(1_767_225_599_999_999) == "2025-12"  # 2025-12-31T23:59:59.999999Z
    assert month_of(1_767_225_600_000_000) == "2026-01"

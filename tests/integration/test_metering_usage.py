"""Usage records, invoices and statements against a real broker, on SQLite and PostgreSQL.

- every call (answered, refused, failed) has one usage record, written with its outcome entry;
- a month's report equals the sum of its records, and the records are exactly the month's
  outcome entries in the audit log;
- every record proves into the log: an inclusion proof of its leaf against a signed checkpoint
  (the existing verifier), and the proven entry holds the record's units and cost;
- a buyer reads only its own usage, a vendor only its own models' (negative tests).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from broker._proto.broker.v1 import audit_pb2, audit_pb2_grpc, models_pb2, usage_pb2
from broker.audit import merkle
from broker.audit.checkpoint import open_checkpoint
from broker.audit.note import Verifier
from broker.metering.records import month_of
from tests.integration.harness import BrokerHarness, FakeBackend, echo_model, start_broker

ACME = "acme-models/echo@1.0.0"
OTHER = "other-models/echo@1.0.0"


@pytest.fixture
def broker(tmp_path: Path, database_url: str, backend: FakeBackend) -> Iterator[BrokerHarness]:
    harness = start_broker(tmp_path / "var", database_url)
    acme = echo_model(backend.target)
    acme.pricing.CopyFrom(
        models_pb2.Pricing(currency="USD", per_call_micros=2000, per_tensor_element_micros=7)
    )
    harness.client("acme-models", "vendor").register_model(acme)
    other = echo_model(backend.target)
    other.pricing.CopyFrom(models_pb2.Pricing(currency="EUR", per_call_micros=500))
    harness.client("other-models", "vendor").register_model(other)
    yield harness
    harness.stop()


def _outcomes(broker: BrokerHarness, **flt: str) -> list[audit_pb2.AuditEntry]:
    with broker.channel() as channel:
        replies = audit_pb2_grpc.AuditStub(channel).QueryEntries(
            audit_pb2.QueryEntriesRequest(
                filter=audit_pb2.AuditFilter(kind="call.outcome", **flt), page_size=1000
            ),
            metadata=(("authorization", f"Bearer {broker.token('ops', 'auditor')}"),),
            timeout=10,
        )
        return list(replies)


def _make_calls(broker: BrokerHarness) -> str:
    """bank: 3 calls to acme, 1 to other, 1 refused (missing model); shop: 2 to acme."""
    month = month_of(time.time_ns() // 1000)
    bank = broker.client("bank", "buyer")
    for text in ("a", "bb", "ccc"):
        bank.invoke(ACME, {"text": text})
    bank.invoke(OTHER, {"text": "x"})
    with pytest.raises(grpc.RpcError) as refused:
        bank.invoke("acme-models/missing@1.0.0", {"text": "x"})
    assert refused.value.code() is grpc.StatusCode.NOT_FOUND
    shop = broker.client("shop", "buyer")
    shop.invoke(ACME, {"text": "s1"})
    shop.invoke(ACME, {"text": "s2"})
    return month


def _sum(records: list[usage_pb2.UsageRecord], currency: str, name: str) -> int:
    return sum(getattr(r, name) for r in records if r.currency == currency)


def test_an_invoice_is_the_sum_of_its_records_and_each_proves_into_the_log(
    broker: BrokerHarness, database_url: str
) -> None:
    month = _make_calls(broker)
    bank = broker.client("bank", "buyer")
    records, totals = bank.usage_report(month)

    outcomes = {e.call_id: e for e in _outcomes(broker, tenant="bank")}
    assert {r.call_id for r in records} == set(outcomes)  # every call, and only calls, of bank
    assert len(records) == 5
    assert {r.tenant for r in records} == {"bank"}

    by_currency = {t.currency: t for t in totals}
    assert set(by_currency) == {"USD", "EUR", ""}  # "" is the refused call: free, 0 calls
    for currency, total in by_currency.items():
        assert total.records == sum(1 for r in records if r.currency == currency)
        for name in ("calls", "tensor_elements", "bytes_in", "bytes_out", "cost_micros"):
            assert getattr(total, name) == _sum(records, currency, name), (currency, name)
    assert by_currency["USD"].cost_micros == 3 * (2000 + 7)  # 3 calls, 1 element each
    assert by_currency["EUR"].cost_micros == 500
    assert by_currency[""].calls == 0
    assert by_currency[""].cost_micros == 0

    # The records as stored equal the report, line for line.
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(
                sa.text(
                    "SELECT call_id, leaf_index, cost_micros FROM usage_records "
                    "WHERE tenant = 'bank'"
                )
            ).all()
    finally:
        engine.dispose()
    assert sorted(tuple(row) for row in stored) == sorted(
        (r.call_id, r.leaf_index, r.cost_micros) for r in records
    )

    # Every line proves into the log, and the proven entry holds the line's figures.
    metadata = (("authorization", f"Bearer {broker.token('bank', 'compliance')}"),)
    last = max(r.leaf_index for r in records)
    with broker.channel() as channel:
        stub = audit_pb2_grpc.AuditStub(channel)
        deadline = time.monotonic() + 10
        while True:
            checkpoint = stub.GetCheckpoint(audit_pb2.GetCheckpointRequest(), metadata=metadata)
            if checkpoint.tree_size > last or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        verifier = Verifier.from_vkey(checkpoint.vkey)
        for record in records:
            proof = stub.GetInclusionProof(
                audit_pb2.GetInclusionProofRequest(leaf_index=record.leaf_index),
                metadata=metadata,
            )
            signed, _ = open_checkpoint(proof.checkpoint, [verifier])
            (item,) = proof.proofs
            merkle.verify_inclusion(
                merkle.leaf_hash(item.entry),
                item.leaf_index,
                signed.size,
                list(item.hashes),
                signed.root_hash,
            )
            body = json.loads(item.entry)
            assert body["kind"] == "call.outcome"
            assert body["call_id"] == record.call_id
            assert body["time_us"] == record.time_us
            assert body["metering"] == {
                "calls": record.calls,
                "input_tokens": record.input_tokens,
                "output_tokens": record.output_tokens,
                "tensor_elements": record.tensor_elements,
                "cpu_us": record.cpu_us,
                "bytes_in": record.bytes_in,
                "bytes_out": record.bytes_out,
                "currency": record.currency,
                "cost_micros": record.cost_micros,
            }
            # A line whose cost was changed no longer matches what the log proves.
            forged = item.entry.replace(
                f'"cost_micros":{record.cost_micros}'.encode(),
                f'"cost_micros":{record.cost_micros + 1}'.encode(),
            )
            assert forged != item.entry
            with pytest.raises(merkle.VerificationError):
                merkle.verify_inclusion(
                    merkle.leaf_hash(forged),
                    item.leaf_index,
                    signed.size,
                    list(item.hashes),
                    signed.root_hash,
                )


def test_a_vendor_statement_holds_only_its_own_models(broker: BrokerHarness) -> None:
    month = _make_calls(broker)
    acme = broker.client("acme-models", "vendor")
    records, totals = acme.usage_report(month, vendor="acme-models")
    assert {r.vendor for r in records} == {"acme-models"}
    assert sorted(r.tenant for r in records) == ["bank"] * 3 + ["shop"] * 2
    assert [(t.currency, t.calls, t.cost_micros) for t in totals] == [("USD", 5, 5 * 2007)]
    outcomes = _outcomes(broker, vendor="acme-models")
    assert {e.call_id for e in outcomes} == {r.call_id for r in records}
    narrowed, _ = acme.usage_report(month, vendor="acme-models", tenant="shop")
    assert sorted(r.tenant for r in narrowed) == ["shop", "shop"]


@pytest.mark.parametrize(
    ("tenant", "roles", "ask"),
    [
        ("shop", ("buyer",), {"tenant": "bank"}),  # another buyer's invoice
        ("shop", ("compliance",), {"tenant": "bank"}),
        ("bank", ("buyer",), {"vendor": "acme-models"}),  # a buyer asking for a statement
        ("other-models", ("vendor",), {"vendor": "acme-models"}),  # another vendor's statement
        ("acme-models", ("vendor",), {"tenant": "bank"}),  # a vendor asking for an invoice
        ("bank", ("auditor",), {}),  # no role that reads usage
    ],
)
def test_nobody_reads_usage_that_is_not_theirs(
    broker: BrokerHarness, tenant: str, roles: tuple[str, ...], ask: dict[str, str]
) -> None:
    month = _make_calls(broker)
    client = broker.client(tenant, *roles)
    with pytest.raises(grpc.RpcError) as refused:
        client.usage_report(month, **ask)
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "only" in (refused.value.details() or "")


def test_bad_month_and_page_token_say_what_to_fix(broker: BrokerHarness) -> None:
    bank = broker.client("bank", "buyer")
    with pytest.raises(grpc.RpcError) as bad:
        bank.usage_report("2026-13")
    assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "YYYY-MM" in (bad.value.details() or "")
    with pytest.raises(grpc.RpcError) as token:
        bank._call(
            bank.usage.Report,
            usage_pb2.UsageReportRequest(month="2026-12", page_token="x; DROP"),
            10,
        )
    assert token.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_usage_holds_no_payload_value(broker: BrokerHarness, database_url: str) -> None:
    canary = f"Canary{uuid.uuid4().hex[:12]}"
    bank = broker.client("bank", "buyer")
    bank.invoke(ACME, {"text": canary})
    records, totals = bank.usage_report(month_of(time.time_ns() // 1000))
    assert canary not in str(records) + str(totals)
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT * FROM usage_records")).all()
    finally:
        engine.dispose()
    assert rows
    assert canary not in repr(rows)


def test_usage_records_are_append_only(broker: BrokerHarness, database_url: str) -> None:
    broker.client("bank", "buyer").invoke(ACME, {"text": "x"})
    engine = sa.create_engine(database_url)
    try:
        for statement in (
            "UPDATE usage_records SET cost_micros = 0",
            "DELETE FROM usage_records",
        ):
            with pytest.raises(sa.exc.DatabaseError, match="append-only"), engine.begin() as conn:
                conn.execute(sa.text(statement))
    finally:
        engine.dispose()


def test_the_cli_prints_a_csv_invoice_whose_total_is_its_lines(broker: BrokerHarness) -> None:
    month = _make_calls(broker)
    env = {
        **os.environ,
        "BROKER_TARGET": broker.target,
        "BROKER_TOKEN": broker.token("shop", "buyer"),
    }
    command = [sys.executable, "-m", "broker.cli.main", "usage", "report", "--month", month]
    printed = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert printed.returncode == 0, printed.stderr
    rows = list(csv.DictReader(io.StringIO(printed.stdout)))
    lines = [r for r in rows if r["call_id"] != "TOTAL"]
    (total,) = [r for r in rows if r["call_id"] == "TOTAL"]
    assert len(lines) == 2 and {r["tenant"] for r in lines} == {"shop"}
    assert int(total["cost_micros"]) == sum(int(r["cost_micros"]) for r in lines) == 2 * 2007
    assert total["cost"] == "0.004014" and total["currency"] == "USD"
    assert all(r["leaf_index"].isdigit() for r in lines)

    env["BROKER_TOKEN"] = broker.token("shop", "buyer")
    other = subprocess.run(
        [*command, "--tenant", "bank"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert other.returncode == 1
    assert other.stderr.startswith("broker: PERMISSION_DENIED: usage of tenant bank")


def test_pages_follow_each_other_and_carry_the_months_totals(broker: BrokerHarness) -> None:
    month = _make_calls(broker)
    bank = broker.client("bank", "buyer")
    everything, totals = bank.usage_report(month)
    seen: list[usage_pb2.UsageRecord] = []
    token = ""
    pages = 0
    while True:
        page = bank._call(
            bank.usage.Report,
            usage_pb2.UsageReportRequest(month=month, page_size=2, page_token=token),
            10,
        )
        pages += 1
        assert list(page.totals) == totals  # every page: the whole month's totals
        seen.extend(page.records)
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert [r.call_id for r in seen] == [r.call_id for r in everything]
    assert [r.leaf_index for r in seen] == sorted(r.leaf_index for r in seen)

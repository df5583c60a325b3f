"""Every call on the audit record, in the right order, provable, and never with a value."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import orjson
import pytest
import sqlalchemy as sa

from broker._proto.broker.v1 import audit_pb2, audit_pb2_grpc, broker_pb2
from broker.audit import merkle
from broker.audit.checkpoint import open_checkpoint
from broker.audit.note import Verifier
from tests.integration.harness import (
    BrokerHarness,
    FakeBackend,
    echo_model,
    start_broker,
)

MODEL = "acme-models/echo@1.0.0"


@pytest.fixture
def broker(tmp_path: Path, database_url: str, backend: FakeBackend) -> Iterator[BrokerHarness]:
    harness = start_broker(tmp_path / "var", database_url)
    harness.client("acme-models", "vendor").register_model(
        echo_model(backend.target, labels=("pii.name",))
    )
    yield harness
    harness.stop()


def _entries(broker: BrokerHarness, **flt: str) -> list[dict[str, object]]:
    with broker.channel() as channel:
        stub = audit_pb2_grpc.AuditStub(channel)
        replies = stub.QueryEntries(
            audit_pb2.QueryEntriesRequest(filter=audit_pb2.AuditFilter(**flt), page_size=500),
            metadata=(("authorization", f"Bearer {broker.token('ops', 'auditor')}"),),
            timeout=10,
        )
        return [{"leaf_index": r.leaf_index, **json.loads(r.entry)} for r in replies]


def test_intent_before_dispatch_and_outcome_before_answer(
    broker: BrokerHarness, backend: FakeBackend
) -> None:
    canary = f"Canary{uuid.uuid4().hex[:10]}"
    buyer = broker.client("bank", "buyer")
    request = broker_pb2.InvokeRequest(model=MODEL, json=orjson.dumps({"text": canary}))
    reply = buyer._call(buyer.broker.Invoke, request, 10)
    assert orjson.loads(reply.json) == {"echo": canary}

    entries = _entries(broker, call_id=reply.call_id)
    intent, outcome = entries
    assert intent["kind"] == "call.intent"
    assert outcome["kind"] == "call.outcome"
    assert intent["leaf_index"] < outcome["leaf_index"]
    assert outcome["intent_index"] == intent["leaf_index"]
    assert outcome["status"] == "OK"
    assert intent["fields"] == [{"path": "/text", "labels": ["pii.name"], "action": "tokenize"}]
    assert str(intent["request_digest"]).startswith("hmac-sha256:")
    assert intent["policy_revision"] == reply.policy_revision
    assert reply.receipt.leaf_index == outcome["leaf_index"]
    assert reply.receipt.intent_leaf_index == intent["leaf_index"]
    assert reply.receipt.log_origin == "broker.local/audit"
    assert canary not in json.dumps(entries)

    kinds = {e["kind"] for e in _entries(broker)}
    assert {"admin.policy.activated", "admin.model.registered"} <= kinds


def test_denied_and_failed_calls_are_recorded(broker: BrokerHarness, backend: FakeBackend) -> None:
    buyer = broker.client("bank", "buyer")
    with pytest.raises(grpc.RpcError):
        buyer.invoke(MODEL, {"text": "SSN 536-90-4399"}, purpose="marketing")
    with pytest.raises(grpc.RpcError):
        buyer.invoke("acme-models/missing@1.0.0", {"text": "x"})
    outcomes = _entries(broker, kind="call.outcome")
    statuses = sorted(str(e["status"]) for e in outcomes)
    assert statuses == ["NOT_FOUND", "PERMISSION_DENIED"]
    assert all(e["intent_index"] is None for e in outcomes)
    assert backend.log.requests == []
    assert "536-90" not in json.dumps(outcomes)


def test_preview_is_recorded(broker: BrokerHarness) -> None:
    buyer = broker.client("bank", "buyer")
    preview = buyer.preview(MODEL, {"text": "x"})
    (entry,) = _entries(broker, kind="call.preview")
    assert entry["allowed"] is True
    assert preview.receipt.leaf_index == entry["leaf_index"]


def test_receipt_is_proven_against_a_signed_checkpoint(broker: BrokerHarness) -> None:
    buyer = broker.client("bank", "buyer")
    reply = buyer._call(
        buyer.broker.Invoke, broker_pb2.InvokeRequest(model=MODEL, json=b'{"text": "p"}'), 10
    )
    metadata = (("authorization", f"Bearer {broker.token('bank', 'compliance')}"),)
    with broker.channel() as channel:
        stub = audit_pb2_grpc.AuditStub(channel)
        deadline = time.monotonic() + 10
        while True:
            checkpoint = stub.GetCheckpoint(audit_pb2.GetCheckpointRequest(), metadata=metadata)
            if checkpoint.tree_size > reply.receipt.leaf_index or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        proof = stub.GetInclusionProof(
            audit_pb2.GetInclusionProofRequest(leaf_index=reply.receipt.leaf_index),
            metadata=metadata,
        )
    verifier = Verifier.from_vkey(checkpoint.vkey)
    signed, _ = open_checkpoint(proof.checkpoint, [verifier])
    (item,) = proof.proofs
    assert merkle.leaf_hash(item.entry).hex() != ""
    merkle.verify_inclusion(
        merkle.leaf_hash(item.entry),
        item.leaf_index,
        signed.size,
        list(item.hashes),
        signed.root_hash,
    )
    tampered = item.entry.replace(b'"OK"', b'"XX"')
    with pytest.raises(merkle.VerificationError):
        merkle.verify_inclusion(
            merkle.leaf_hash(tampered),
            item.leaf_index,
            signed.size,
            list(item.hashes),
            signed.root_hash,
        )


def test_audit_store_down_refuses_the_call_and_sends_nothing(
    broker: BrokerHarness, backend: FakeBackend, database_url: str
) -> None:
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE audit_entries RENAME TO audit_entries_gone"))
    finally:
        engine.dispose()
    buyer = broker.client("bank", "buyer", max_attempts=1)
    with pytest.raises(grpc.RpcError) as exc:
        buyer.invoke(MODEL, {"text": "x"}, timeout=30)
    assert exc.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert "audit" in exc.value.details()  # type: ignore[attr-defined]
    assert backend.log.requests == []

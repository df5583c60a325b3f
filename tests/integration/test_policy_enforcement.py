"""Every policy action, both directions, through a real gRPC call to a real backend.

The backend is the echo OIP server: it answers with exactly what it received, so each test sees
what the model was given and what the buyer got back. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
import sqlalchemy as sa
from grpc_status import rpc_status

from broker._proto.broker.v1 import broker_pb2
from broker.client import BrokerClient
from broker.enforce.vault import new_token
from tests.integration.harness import (
    BrokerHarness,
    FakeBackend,
    fields_echo_model,
    start_broker,
)

MODEL = "acme-models/fields-echo@1.0.0"
FIELDS = {
    "name": "/customer/name",
    "card": "/customer/card",
    "ip": "/customer/ip",
    "note": "/note",
    "internal": "/internal",
    "debug": "/debug",
}
SCHEMA = {"/customer/name": ("pii.name",), "/customer/card": ("pci.card",)}
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0"
    "IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)


def _payload(canary: str = "Ada Lovelace") -> dict[str, Any]:
    return {
        "customer": {"name": canary, "card": "4111 1111 1111 1111", "ip": "203.0.113.7"},
        "note": "Please email ada@example.com or call +44 20 7946 0958 about the order.",
        "internal": f"merger talks {canary}",
        "debug": f"session token {JWT}",
    }


@pytest.fixture
def broker(tmp_path: Path, database_url: str, backend: FakeBackend) -> Iterator[BrokerHarness]:
    harness = start_broker(tmp_path / "var", database_url)
    vendor = harness.client("acme-models", "vendor")
    vendor.register_model(fields_echo_model(backend.target, FIELDS, SCHEMA))
    yield harness
    harness.stop()


def _invoke(
    client: BrokerClient, payload: dict[str, Any], **fields: Any
) -> broker_pb2.InvokeResponse:
    labels = fields.pop("labels", {})
    request = broker_pb2.InvokeRequest(model=MODEL, json=orjson.dumps(payload), **fields)
    for path, names in labels.items():
        request.labels[path].labels.extend(names)
    return client._call(client.broker.Invoke, request, 10)


def _sent(backend: FakeBackend) -> dict[str, str]:
    request = backend.log.requests[-1]
    return {t.name: t.contents.bytes_contents[0].decode() for t in request.inputs}


def test_every_action_both_ways(broker: BrokerHarness, backend: FakeBackend) -> None:
    buyer = broker.client("bank", "buyer")
    reply = _invoke(buyer, _payload(), labels={"/internal": ["confidential"]})
    sent = _sent(backend)

    # What the remote model received.
    assert re.fullmatch(r"TKN-[0-9A-Z]{20}", sent["name"])
    assert sent["card"] == "**** **** **** 1111"
    assert re.fullmatch(r"hash:[a-z2-7]{26}", sent["ip"])
    assert "ada@example.com" not in sent["note"]
    assert "7946" not in sent["note"]
    assert re.fullmatch(
        r"Please email TKN-[0-9A-Z]{20} or call TKN-[0-9A-Z]{20} about the order\.", sent["note"]
    )
    assert sent["internal"].startswith("enc:v1:")
    assert "merger" not in sent["internal"]
    assert sent["debug"] == "session token [REDACTED:secret.jwt]"

    # What the buyer got back: its own values restored, the rest as the policy left it.
    answer = orjson.loads(reply.json)
    assert answer["name"] == "Ada Lovelace"
    assert answer["note"] == _payload()["note"]
    assert answer["internal"] == "merger talks Ada Lovelace"
    assert answer["card"] == "**** **** **** 1111"
    assert answer["ip"] == sent["ip"]
    assert answer["debug"] == "session token [REDACTED:secret.jwt]"
    assert reply.restored_values == 4
    assert reply.policy_revision.startswith("sha256:")

    decisions = {(d.direction, d.path): d for d in reply.decisions}
    assert decisions[("request", "/customer/name")].action == "tokenize"
    assert list(decisions[("request", "/customer/name")].labels) == ["pii.name"]
    assert decisions[("request", "/internal")].action == "encrypt"
    note = decisions[("request", "/note")]
    assert note.action == "allow"
    assert {(e.label, e.action, e.count) for e in note.entities} == {
        ("pii.email", "tokenize", 1),
        ("pii.phone", "tokenize", 1),
    }
    assert ("response", "/name") in decisions
    assert "Ada" not in str(reply.decisions)


def test_hash_is_stable_per_tenant_and_differs_across_tenants(
    broker: BrokerHarness, backend: FakeBackend
) -> None:
    _invoke(broker.client("bank", "buyer"), _payload())
    first = _sent(backend)["ip"]
    _invoke(broker.client("bank", "buyer"), _payload())
    assert _sent(backend)["ip"] == first
    _invoke(broker.client("other-bank", "buyer"), _payload())
    assert _sent(backend)["ip"] != first


def test_policy_deny_names_the_reason_and_sends_nothing(
    broker: BrokerHarness, backend: FakeBackend
) -> None:
    payload = _payload()
    payload["note"] = "SSN 536-90-4399 on file"
    buyer = broker.client("bank", "buyer")
    with pytest.raises(grpc.RpcError) as exc:
        _invoke(buyer, payload, purpose="marketing")
    assert exc.value.code() is grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert "pii.national_id.us_ssn may not be used for purpose marketing" in (
        exc.value.details()  # type: ignore[attr-defined]
    )
    assert "536-90" not in exc.value.details()  # type: ignore[attr-defined]
    status = rpc_status.from_call(exc.value)  # type: ignore[arg-type]
    assert status is not None
    assert backend.log.requests == []


def test_sandbox_only_field_is_refused_for_a_remote_model(
    broker: BrokerHarness, backend: FakeBackend
) -> None:
    buyer = broker.client("bank", "buyer")
    with pytest.raises(grpc.RpcError) as exc:
        _invoke(buyer, _payload(), labels={"/internal": ["restricted"]})
    assert exc.value.code() is grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert "/internal" in exc.value.details()  # type: ignore[attr-defined]
    assert backend.log.requests == []


def test_tenant_that_drops_restricted_fields(broker: BrokerHarness, backend: FakeBackend) -> None:
    globex = broker.client("globex", "buyer")
    preview = globex.broker.Preview(
        broker_pb2.PreviewRequest(
            model=MODEL,
            json=orjson.dumps(_payload()),
            purpose="support",
            labels={"/internal": broker_pb2.LabelList(labels=["restricted"])},
        ),
        metadata=(("authorization", f"Bearer {broker.token('globex', 'buyer')}"),),
        timeout=10,
    )
    assert preview.allow
    actions = {d.path: d.action for d in preview.decisions}
    assert actions["/internal"] == "drop"
    assert actions["/customer/name"] == "tokenize"
    assert backend.log.requests == []


def test_preview_sends_nothing_and_shows_denials(
    broker: BrokerHarness, backend: FakeBackend
) -> None:
    token = broker.token("globex", "buyer")
    channel = broker.channel()
    from broker._proto.broker.v1 import broker_pb2_grpc  # noqa: PLC0415

    stub = broker_pb2_grpc.BrokerStub(channel)
    reply = stub.Preview(
        broker_pb2.PreviewRequest(
            model=MODEL,
            json=orjson.dumps(_payload()),
            purpose="marketing",
            labels={"/nope": broker_pb2.LabelList(labels=["confidential"])},
        ),
        metadata=(("authorization", f"Bearer {token}"),),
        timeout=10,
    )
    channel.close()
    assert not reply.allow
    assert reply.reasons == ["tenant globex does not allow purpose marketing"]
    assert list(reply.unmatched_label_keys) == ["/nope"]
    assert backend.log.requests == []


def test_tokens_are_restored_only_for_their_own_tenant_and_call(
    broker: BrokerHarness, backend: FakeBackend
) -> None:
    bank = broker.client("bank", "buyer")
    _invoke(bank, _payload())
    stolen = _sent(backend)["name"]
    forged = new_token()

    attacker = broker.client("mallory", "buyer")
    payload = _payload()
    payload["customer"]["name"] = "x"
    payload["note"] = f"{stolen} and {forged}"
    reply = _invoke(attacker, payload)
    assert orjson.loads(reply.json)["note"] == f"{stolen} and {forged}"

    reply = _invoke(bank, payload)
    assert orjson.loads(reply.json)["note"] == f"{stolen} and {forged}", "another call's token"


def _scan_database(url: str, needle: str) -> list[str]:
    engine = sa.create_engine(url)
    found = []
    try:
        meta = sa.MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            for table in meta.sorted_tables:
                for row in conn.execute(sa.select(table)):
                    if needle in repr(tuple(row)):
                        found.append(table.name)
    finally:
        engine.dispose()
    return found


def test_canary_never_leaves_where_the_plan_forbids(
    broker: BrokerHarness,
    backend: FakeBackend,
    database_url: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    canary = f"Canary{uuid.uuid4().hex[:12]}"
    buyer = broker.client("bank", "buyer")
    payload = _payload(canary)
    payload["debug"] = f"key AKIA{uuid.uuid4().hex[:16].upper()} {canary}"
    reply = _invoke(
        buyer, payload, labels={"/internal": ["confidential"], "/debug": ["secret.note"]}
    )
    assert orjson.loads(reply.json)["name"] == canary

    received = b"".join(request.SerializeToString() for request in backend.log.requests)
    assert canary.encode() not in received
    for bad in (payload_error for payload_error in [b"{", b"[]"]):
        with pytest.raises(grpc.RpcError) as exc:
            buyer.invoke(MODEL, bad + canary.encode())
        assert canary not in exc.value.details()  # type: ignore[attr-defined]
    broker.stop()
    out, err = capfd.readouterr()
    assert canary not in out
    assert canary not in err
    assert _scan_database(database_url, canary) == []
    files = list(Path(broker.config.data_dir).rglob("*"))
    if database_url.startswith("sqlite:///"):
        database = Path(database_url.removeprefix("sqlite:///"))
        files += [database, database.with_name(database.name + "-wal")]
    for path in files:
        if path.is_file():
            assert canary.encode() not in path.read_bytes(), path

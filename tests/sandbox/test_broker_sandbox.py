"""Sandbox models through the broker: `sandbox` fields reach the sandboxed model, nothing else."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import orjson
import pytest
import sqlalchemy as sa

from broker._proto.broker.v1 import audit_pb2, audit_pb2_grpc, broker_pb2, models_pb2
from broker.packages.store import PackageStore
from tests.integration.harness import (
    BrokerHarness,
    FakeBackend,
    fields_echo_model,
    start_broker,
)

pytestmark = pytest.mark.sandbox

ECHO_PKG = Path(__file__).parent / "echo_pkg"


@pytest.fixture
def broker(
    tmp_path: Path, database_url: str, launcher: object, backend: FakeBackend
) -> Iterator[BrokerHarness]:
    harness = start_broker(tmp_path / "var", database_url)
    digest = PackageStore(harness.config.data_dir).add(ECHO_PKG).digest
    vendor = harness.client("acme-models", "vendor")
    vendor.register_model(
        models_pb2.Model(
            name="sandboxed-echo",
            version="1.0.0",
            runtime=models_pb2.RUNTIME_SANDBOX,
            package_digest=digest,
            fields=[
                models_pb2.FieldSpec(path="/secret", type="string", labels=["restricted"]),
                models_pb2.FieldSpec(path="/name", type="string", labels=["pii.name"]),
            ],
        )
    )
    vendor.register_model(
        fields_echo_model(
            backend.target,
            {"secret": "/secret", "name": "/name"},
            {"/secret": ("restricted",), "/name": ("pii.name",)},
            name="remote-echo",
        )
    )
    yield harness
    harness.stop()


def test_sandbox_field_reaches_only_the_sandboxed_model(
    broker: BrokerHarness,
    backend: FakeBackend,
    database_url: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    canary = f"Canary{uuid.uuid4().hex[:12]}"
    payload = {"secret": canary, "name": "Ada Lovelace"}
    buyer = broker.client("bank", "buyer")
    reply = buyer._call(
        buyer.broker.Invoke,
        broker_pb2.InvokeRequest(
            model="acme-models/sandboxed-echo@1.0.0", json=orjson.dumps(payload)
        ),
        60,
    )
    received = orjson.loads(reply.json)["received"]
    # In the broker's sandbox the policy lets restricted data and personal data through.
    assert received == payload
    actions = {d.path: d.action for d in reply.decisions if d.direction == "request"}
    assert actions == {"/secret": "sandbox", "/name": "allow"}

    with pytest.raises(grpc.RpcError) as exc:
        buyer.invoke("acme-models/remote-echo@1.0.0", payload)
    assert exc.value.code() is grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert backend.log.requests == []

    broker.stop()
    out, err = capfd.readouterr()
    assert canary not in out + err
    engine = sa.create_engine(database_url)
    try:
        meta = sa.MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            for table in meta.sorted_tables:
                for row in conn.execute(sa.select(table)):
                    assert canary not in repr(tuple(row)), table.name
    finally:
        engine.dispose()


def test_a_limit_hit_is_refused_and_audited(broker: BrokerHarness) -> None:
    digest = PackageStore(broker.config.data_dir).add(Path(__file__).parent / "pool_pkg").digest
    broker.client("acme-models", "vendor").register_model(
        models_pb2.Model(
            name="pool-probe",
            version="1.0.0",
            runtime=models_pb2.RUNTIME_SANDBOX,
            package_digest=digest,
        )
    )
    buyer = broker.client("bank", "buyer", max_attempts=1)
    with pytest.raises(grpc.RpcError) as exc:
        buyer.invoke(
            "acme-models/pool-probe@1.0.0", {"do": "allocate", "bytes": 4 << 30}, timeout=60
        )
    assert exc.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert "memory" in exc.value.details()  # type: ignore[attr-defined]

    with broker.channel() as channel:
        entries = list(
            audit_pb2_grpc.AuditStub(channel).QueryEntries(
                audit_pb2.QueryEntriesRequest(
                    filter=audit_pb2.AuditFilter(kind="admin.sandbox.violation")
                ),
                metadata=(("authorization", f"Bearer {broker.token('ops', 'auditor')}"),),
                timeout=10,
            )
        )
    (entry,) = entries
    body = orjson.loads(entry.entry)
    assert body["tenant"] == "bank"
    assert body["target"] == "acme-models/pool-probe@1.0.0"
    assert "memory" in body["details"]["reason"]

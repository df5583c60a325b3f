"""Retention on the call path: what the policy says to keep is kept, encrypted, for the buyer."""

from __future__ import annotations

from pathlib import Path

import grpc
import orjson
import pytest

from broker._proto.broker.v1 import broker_pb2, retention_pb2, retention_pb2_grpc
from broker.retention.rootkey import generate_root_key_file
from tests.integration.harness import (
    BrokerHarness,
    FakeBackend,
    echo_model,
    start_broker,
)
from tests.integration.test_invoke_stream import outcome


def _broker(tmp_path: Path, database_url: str, backend: FakeBackend, **env: str) -> BrokerHarness:
    harness = start_broker(tmp_path / "var", database_url, **env)
    harness.client("acme-models", "vendor").register_model(echo_model(backend.target))
    return harness


def test_kept_as_the_policy_says_and_readable_only_by_its_tenant(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    database_url: str,
    backend: FakeBackend,
) -> None:
    root_key = tmp_path_factory.mktemp("secrets") / "root.key"
    generate_root_key_file(root_key)
    broker = _broker(
        tmp_path, database_url, backend, BROKER__RETENTION__ROOT_KEY_FILE=str(root_key)
    )
    try:
        # The shipped policy keeps tenant acme's requests 7 days and answers 30.
        acme = broker.client("acme", "buyer")
        reply = acme.broker.Invoke(
            broker_pb2.InvokeRequest(model="acme-models/echo@1.0.0", json=b'{"text": "keep me"}'),
            metadata=(("authorization", f"Bearer {broker.token('acme', 'buyer')}"),),
            timeout=10,
        )
        assert len(reply.retained_record_ids) == 2
        # The audit outcome names the records, so the log leads a compliance officer to them.
        entry = outcome(broker, reply.call_id)
        assert sorted(entry["retained_record_ids"]) == sorted(reply.retained_record_ids)
        with broker.channel() as channel:
            stub = retention_pb2_grpc.RetentionStub(channel)
            payloads = [
                stub.GetRecord(
                    retention_pb2.GetRecordRequest(record_id=record_id),
                    metadata=(("authorization", f"Bearer {broker.token('acme', 'buyer')}"),),
                    timeout=10,
                ).payload
                for record_id in reply.retained_record_ids
            ]
            assert sorted((orjson.loads(p) for p in payloads), key=str) == sorted(
                [{"text": "keep me"}, {"echo": "keep me"}], key=str
            )
            with pytest.raises(grpc.RpcError) as exc:
                stub.GetRecord(
                    retention_pb2.GetRecordRequest(record_id=reply.retained_record_ids[0]),
                    metadata=(("authorization", f"Bearer {broker.token('mallory', 'buyer')}"),),
                    timeout=10,
                )
            assert exc.value.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]

        # A tenant whose policy keeps nothing gets no records.
        other = broker.client("bank", "buyer").invoke("acme-models/echo@1.0.0", {"text": "x"})
        assert other.answer == {"echo": "x"}
        assert "retained_record_ids" not in outcome(broker, other.call_id)  # bytes as before
    finally:
        broker.stop()


def test_policy_demands_retention_but_broker_keeps_nothing(
    tmp_path: Path, database_url: str, backend: FakeBackend
) -> None:
    broker = _broker(tmp_path, database_url, backend)
    try:
        with pytest.raises(grpc.RpcError) as exc:
            broker.client("acme", "buyer").invoke("acme-models/echo@1.0.0", {"text": "x"})
        assert exc.value.code() is grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
        assert "retained" in exc.value.details()  # type: ignore[attr-defined]
        assert backend.log.requests == []
    finally:
        broker.stop()

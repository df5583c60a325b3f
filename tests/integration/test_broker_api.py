"""The broker's gRPC API end to end: real broker, real gRPC clients, a real OIP backend.

Each test runs on SQLite and on PostgreSQL (the ``database_url`` fixture).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import orjson
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from broker._proto.broker.v1 import broker_pb2, broker_pb2_grpc, models_pb2, registry_pb2
from broker.client import InvokeAnswer
from tests.integration.harness import (
    BrokerHarness,
    FakeBackend,
    echo_model,
    start_broker,
)


@pytest.fixture
def broker(tmp_path: Path, database_url: str) -> Iterator[BrokerHarness]:
    harness = start_broker(tmp_path / "var", database_url, BROKER__LIMITS__TENANT_CONCURRENCY="2")
    yield harness
    harness.stop()


def _code(exc: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return exc.value.code()  # type: ignore[attr-defined, no-any-return]


def _details(exc: pytest.ExceptionInfo[grpc.RpcError]) -> str:
    return exc.value.details()  # type: ignore[attr-defined, no-any-return]


def test_health_and_reflection(broker: BrokerHarness) -> None:
    with broker.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "broker.v1.Broker", "broker.v1.Registry"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(stub.ServerReflectionInfo(iter([request]), timeout=5))
        names = {s.name for s in reply.list_services_response.service}
        assert {"broker.v1.Broker", "broker.v1.Registry", "grpc.health.v1.Health"} <= names


def test_vendor_registers_buyer_lists_and_invokes(
    broker: BrokerHarness, backend: FakeBackend
) -> None:
    vendor = broker.client("acme-models", "vendor")
    stored = vendor.register_model(echo_model(backend.target, labels=("pii.name",)))
    assert stored.ref == "acme-models/echo@1.0.0"
    assert stored.vendor == "acme-models"
    assert stored.status == models_pb2.MODEL_STATUS_LISTED

    buyer = broker.client("bank", "buyer")
    catalogue = list(buyer.list_models())
    assert [m.ref for m in catalogue] == ["acme-models/echo@1.0.0"]
    assert list(catalogue[0].labels) == ["pii.name"]

    answer = buyer.invoke("acme-models/echo@1.0.0", {"text": "hello"}, timeout=10)
    assert answer.model == "acme-models/echo@1.0.0"
    assert len(answer.call_id) == 32
    # The vendor declared /text as pii.name: the default policy tokenizes it for a remote
    # model, and the buyer gets its own value back in the answer.
    sent = backend.log.requests[-1].inputs[0].contents.bytes_contents
    assert len(sent) == 1
    assert sent[0].startswith(b"TKN-")
    assert answer.answer == {"echo": "hello"}


def test_newest_listed_version_is_resolved(broker: BrokerHarness, backend: FakeBackend) -> None:
    vendor = broker.client("acme-models", "vendor")
    for version in ("1.9.0", "1.10.0", "1.2.0"):
        vendor.register_model(echo_model(backend.target, version=version))
    buyer = broker.client("bank", "buyer")
    assert buyer.invoke("acme-models/echo", {"text": "x"}).model == "acme-models/echo@1.10.0"
    vendor.retire_model("acme-models/echo@1.10.0")
    assert buyer.invoke("acme-models/echo", {"text": "x"}).model == "acme-models/echo@1.9.0"


def test_struct_payload_round_trips(broker: BrokerHarness, backend: FakeBackend) -> None:
    broker.client("acme-models", "vendor").register_model(echo_model(backend.target))
    payload = struct_pb2.Struct()
    payload.update({"text": "via struct"})
    buyer = broker.client("bank", "buyer")
    reply = buyer.broker.Invoke(
        broker_pb2.InvokeRequest(model="acme-models/echo@1.0.0", struct=payload),
        metadata=(("authorization", f"Bearer {broker.token('bank', 'buyer')}"),),
        timeout=10,
    )
    assert reply.WhichOneof("answer") == "struct"
    assert dict(reply.struct) == {"echo": "via struct"}


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer not-a-jwt"),),
        (("authorization", "Basic dXNlcjpwYXNz"),),
        (("authorization", "Bearer " + "a" * 9000),),
    ],
    ids=["missing", "malformed", "not-bearer", "oversized"],
)
def test_bad_credentials_are_unauthenticated_with_one_message(
    broker: BrokerHarness, metadata: tuple[tuple[str, str], ...]
) -> None:
    with broker.channel() as channel:
        stub = broker_pb2_grpc.BrokerStub(channel)
        with pytest.raises(grpc.RpcError) as exc:
            stub.ListModels(broker_pb2.ListModelsRequest(), metadata=metadata, timeout=5)
    assert _code(exc) is grpc.StatusCode.UNAUTHENTICATED
    assert _details(exc) == "authentication failed: send a valid bearer token"


def test_roles_are_enforced(broker: BrokerHarness, backend: FakeBackend) -> None:
    buyer = broker.client("bank", "buyer")
    with pytest.raises(grpc.RpcError) as exc:
        buyer.register_model(echo_model(backend.target))
    assert _code(exc) is grpc.StatusCode.PERMISSION_DENIED

    vendor = broker.client("acme-models", "vendor")
    vendor.register_model(echo_model(backend.target))
    with pytest.raises(grpc.RpcError) as exc:
        vendor.invoke("acme-models/echo@1.0.0", {"text": "x"})
    assert _code(exc) is grpc.StatusCode.PERMISSION_DENIED
    assert "buyer" in _details(exc)

    other_vendor = broker.client("rival", "vendor")
    with pytest.raises(grpc.RpcError) as exc:
        other_vendor.retire_model("acme-models/echo@1.0.0")
    assert _code(exc) in {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED}
    assert [m.ref for m in broker.client("bank", "buyer").list_models()] == [
        "acme-models/echo@1.0.0"
    ]


def test_registry_errors(broker: BrokerHarness, backend: FakeBackend) -> None:
    vendor = broker.client("acme-models", "vendor")
    vendor.register_model(echo_model(backend.target))
    with pytest.raises(grpc.RpcError) as exc:
        vendor.register_model(echo_model(backend.target))
    assert _code(exc) is grpc.StatusCode.ALREADY_EXISTS
    assert len(list(vendor.vendor_models())) == 1

    buyer = broker.client("bank", "buyer")
    with pytest.raises(grpc.RpcError) as exc:
        buyer.invoke("acme-models/nope@1.0.0", {"text": "x"})
    assert _code(exc) is grpc.StatusCode.NOT_FOUND

    with pytest.raises(grpc.RpcError) as exc:
        buyer.invoke("not a reference", {"text": "x"})
    assert _code(exc) is grpc.StatusCode.INVALID_ARGUMENT

    vendor.retire_model("acme-models/echo@1.0.0")
    with pytest.raises(grpc.RpcError) as exc:
        buyer.invoke("acme-models/echo@1.0.0", {"text": "x"})
    assert _code(exc) is grpc.StatusCode.FAILED_PRECONDITION
    assert "retired" in _details(exc)


def test_vendor_updates_a_model(broker: BrokerHarness, backend: FakeBackend) -> None:
    vendor = broker.client("acme-models", "vendor")
    vendor.register_model(echo_model(backend.target))
    model = echo_model(backend.target)
    model.vendor = "acme-models"
    model.description = "a better description"
    reply = vendor.registry.UpdateModel(
        registry_pb2.UpdateModelRequest(
            model=model, update_mask=field_mask_pb2.FieldMask(paths=["description"])
        ),
        metadata=(("authorization", f"Bearer {broker.token('acme-models', 'vendor')}"),),
        timeout=5,
    )
    assert reply.model.description == "a better description"
    catalogue = list(broker.client("bank", "buyer").list_models())
    assert catalogue[0].description == "a better description"


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"a": ' * 70 + b"1" + b"}" * 70, "nested deeper than the limit of 64"),
        (orjson.dumps({f"k{i}": i for i in range(10_001)}), "more than the limit of 10000 fields"),
        (b'{"text": "' + b"x" * (1024 * 1024) + b'"}', "over the limit of 1048576 bytes"),
    ],
    ids=["malformed", "array", "bad-utf8", "too-deep", "too-many-fields", "too-large"],
)
def test_bad_payloads_are_invalid_argument_naming_the_limit(
    broker: BrokerHarness, backend: FakeBackend, payload: bytes, needle: str
) -> None:
    broker.client("acme-models", "vendor").register_model(echo_model(backend.target))
    buyer = broker.client("bank", "buyer")
    with pytest.raises(grpc.RpcError) as exc:
        buyer.invoke("acme-models/echo@1.0.0", payload)
    assert _code(exc) is grpc.StatusCode.INVALID_ARGUMENT
    assert needle in _details(exc)
    assert backend.log.requests == []


def test_status_details_carry_error_info(broker: BrokerHarness) -> None:
    buyer = broker.client("bank", "buyer")
    with pytest.raises(grpc.RpcError) as exc:
        buyer.invoke("acme-models/missing@1.0.0", {"text": "x"})
    status = rpc_status.from_call(exc.value)  # type: ignore[arg-type]
    assert status is not None
    assert status.details[0].type_url.endswith("google.rpc.ErrorInfo")


def test_backend_down_is_unavailable(broker: BrokerHarness) -> None:
    broker.client("acme-models", "vendor").register_model(echo_model("127.0.0.1:1"))
    buyer = broker.client("bank", "buyer")
    with pytest.raises(grpc.RpcError) as exc:
        buyer.invoke("acme-models/echo@1.0.0", {"text": "x"}, timeout=10)
    assert _code(exc) is grpc.StatusCode.UNAVAILABLE


def test_deadline_is_propagated_and_backend_call_cancelled(
    broker: BrokerHarness, backend: FakeBackend
) -> None:
    broker.client("acme-models", "vendor").register_model(echo_model(backend.target))
    backend.log.delay_seconds = 5.0
    buyer = broker.client("bank", "buyer")
    with pytest.raises(grpc.RpcError) as exc:
        buyer.invoke("acme-models/echo@1.0.0", {"text": "slow"}, timeout=0.5)
    assert _code(exc) is grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 5
    while not backend.log.cancelled and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(backend.log.cancelled) == 1, "the backend call must be cancelled with the caller"


def test_tenant_concurrency_limit(broker: BrokerHarness, backend: FakeBackend) -> None:
    broker.client("acme-models", "vendor").register_model(echo_model(backend.target))
    backend.log.delay_seconds = 1.5
    buyer = broker.client("bank", "buyer")
    results: list[object] = []

    def slow_call() -> None:
        results.append(buyer.invoke("acme-models/echo@1.0.0", {"text": "x"}, timeout=10))

    threads = [threading.Thread(target=slow_call) for _ in range(2)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while len(backend.log.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(grpc.RpcError) as exc:
        buyer.invoke("acme-models/echo@1.0.0", {"text": "x"}, timeout=10)
    assert _code(exc) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit is 2" in _details(exc)
    backend.log.delay_seconds = 0
    other = broker.client("other-bank", "buyer")
    assert other.invoke("acme-models/echo@1.0.0", {"text": "y"}, timeout=10).answer == {"echo": "y"}
    for thread in threads:
        thread.join()
    assert len(results) == 2


def test_graceful_stop_drains_calls_in_flight(
    tmp_path: Path, database_url: str, backend: FakeBackend
) -> None:
    harness = start_broker(tmp_path / "var", database_url)
    harness.client("acme-models", "vendor").register_model(echo_model(backend.target))
    backend.log.delay_seconds = 1.0
    buyer = harness.client("bank", "buyer")
    outcome: dict[str, object] = {}

    def call() -> None:
        outcome["answer"] = buyer.invoke("acme-models/echo@1.0.0", {"text": "drain"}, timeout=10)

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 5
    while not backend.log.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    harness.stop()
    thread.join()
    answer = outcome["answer"]
    assert isinstance(answer, InvokeAnswer)
    assert answer.answer == {"echo": "drain"}


def test_a_tensor_mapping_that_can_never_compile_is_refused_at_registration(
    broker: BrokerHarness, backend: FakeBackend
) -> None:
    model = echo_model(backend.target)
    model.oip_mapping.outputs.add(name="again", path=model.oip_mapping.outputs[0].path)
    with broker.client("acme-models", "vendor") as vendor, pytest.raises(grpc.RpcError) as exc:
        vendor.register_model(model)
    assert exc.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "model.oip_mapping" in exc.value.details()  # type: ignore[attr-defined]

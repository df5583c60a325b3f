"""The Python client retries UNAVAILABLE only, within the caller's deadline."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from broker._proto.broker.v1 import broker_pb2, broker_pb2_grpc
from broker.client import BrokerClient


class ScriptedBroker(broker_pb2_grpc.BrokerServicer):
    """Fails with the scripted codes, then answers; records the metadata it saw."""

    def __init__(self) -> None:
        self.script: list[grpc.StatusCode] = []
        self.calls = 0
        self.authorization: list[str] = []

    def Invoke(
        self, request: broker_pb2.InvokeRequest, context: grpc.ServicerContext
    ) -> broker_pb2.InvokeResponse:
        self.calls += 1
        self.authorization += [v for k, v in context.invocation_metadata() if k == "authorization"]
        if self.script:
            context.abort(self.script.pop(0), "scripted failure")
        return broker_pb2.InvokeResponse(call_id="c1", model=request.model, json=request.json)


@pytest.fixture
def scripted() -> Iterator[tuple[ScriptedBroker, str]]:
    servicer = ScriptedBroker()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    broker_pb2_grpc.add_BrokerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


def test_unavailable_is_retried_and_token_sent(scripted: tuple[ScriptedBroker, str]) -> None:
    servicer, target = scripted
    servicer.script = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE]
    with BrokerClient(target, token="tok", initial_backoff=0.001) as client:
        answer = client.invoke("v/m@1", {"a": 1}, timeout=5)
    assert answer.answer == {"a": 1}
    assert servicer.calls == 3
    assert servicer.authorization == ["Bearer tok"] * 3


def test_attempts_are_bounded(scripted: tuple[ScriptedBroker, str]) -> None:
    servicer, target = scripted
    servicer.script = [grpc.StatusCode.UNAVAILABLE] * 5
    with (
        BrokerClient(target, token="t", max_attempts=2, initial_backoff=0.001) as client,
        pytest.raises(grpc.RpcError) as exc,
    ):
        client.invoke("v/m@1", {}, timeout=5)
    assert exc.value.code() is grpc.StatusCode.UNAVAILABLE
    assert servicer.calls == 2


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ],
)
def test_other_codes_are_not_retried(
    scripted: tuple[ScriptedBroker, str], code: grpc.StatusCode
) -> None:
    servicer, target = scripted
    servicer.script = [code]
    with (
        BrokerClient(target, token="t", initial_backoff=0.001) as client,
        pytest.raises(grpc.RpcError) as exc,
    ):
        client.invoke("v/m@1", {}, timeout=5)
    assert exc.value.code() is code
    assert servicer.calls == 1


def test_token_source_is_called_per_attempt(scripted: tuple[ScriptedBroker, str]) -> None:
    servicer, target = scripted
    servicer.script = [grpc.StatusCode.UNAVAILABLE]
    tokens = iter(["first", "second"])
    with BrokerClient(target, token=lambda: next(tokens), initial_backoff=0.001) as client:
        client.invoke("v/m@1", {}, timeout=5)
    assert servicer.authorization == ["Bearer first", "Bearer second"]

"""Calls that never send their request message must not stop the broker from answering.

grpcio's synchronous server waits for a unary call's request inside a pool thread, so as many
stalled calls as the pool has threads stop the process, health checks included (SECURITY.md,
"Known gaps"). With ``[server] aio`` the wait happens on the event loop and holds no thread.
The stalled calls carry no token: the wait comes before authentication.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.integration.harness import BrokerHarness, FakeBackend, echo_model, start_broker

INVOKE = "/broker.v1.Broker/Invoke"
# More than the pool's 16 threads, and than the 128 calls that may run at once: a stalled call
# has no request yet, so it is not running (the limit on open calls is 1024).
STALLED = 160


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerHarness]:
    harness = start_broker(
        tmp_path / "var", f"sqlite:///{tmp_path / 'broker.db'}", BROKER__SERVER__AIO="true"
    )
    yield harness
    harness.stop()


def _health(channel: grpc.Channel) -> int:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return reply.status  # type: ignore[no-any-return]


def test_stalled_calls_leave_health_and_invoke_answering(
    broker: BrokerHarness, backend: FakeBackend
) -> None:
    broker.client("acme-models", "vendor").register_model(echo_model(backend.target))
    buyer = broker.client("bank", "buyer")
    release = threading.Event()

    def never_sent() -> Iterator[bytes]:
        release.wait()
        yield from ()

    stalled_channel = broker.channel()
    stall = stalled_channel.stream_unary(INVOKE)
    calls = [stall.future(never_sent(), timeout=60) for _ in range(STALLED)]
    try:
        # On the stalled calls' own connection, after them: the server has seen every one.
        assert _health(stalled_channel) == health_pb2.HealthCheckResponse.SERVING
        with broker.channel() as other:
            assert _health(other) == health_pb2.HealthCheckResponse.SERVING
        answer = buyer.invoke("acme-models/echo@1.0.0", {"text": "hello"}, timeout=10)
        assert answer.answer == {"echo": "hello"}
        assert not any(call.done() for call in calls)  # still stalled, not refused
    finally:
        release.set()
        for call in calls:
            call.cancel()
        stalled_channel.close()

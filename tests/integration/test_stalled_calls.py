"""Calls that never send their request message must not stop the broker from answering.

grpcio's synchronous server waits for a unary call's request inside a pool thread, so as many
stalled calls as the pool has threads would stop the process, health checks included. Both
servers bound the wait (SECURITY.md, "Known gaps"): one client address may have only so many
calls waiting for their message at once, and a call's message must arrive within
``request_message_timeout_seconds``. With ``[server] aio`` the wait holds no thread, and the share
is ``max_waiting_per_client``; with the sync server (the default) each waiting call holds a
thread, so the share is at most a quarter of the threads, and stalled calls beyond it are
turned away after a short grace. Calls that send their message are answered whatever their
address has waiting. The stalled calls carry no token: the wait comes before authentication.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from broker.client import BrokerClient
from tests.integration.harness import BrokerHarness, FakeBackend, echo_model, start_broker

INVOKE = "/broker.v1.Broker/Invoke"
# More than the pool's 16 threads, and than the 128 calls that may run at once: a stalled call
# has no request yet, so it is not running (the limit on open calls is 1024).
STALLED = 160
WAITING = 100  # [server] max_waiting_per_client here: the rest of STALLED are refused at once


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerHarness]:
    harness = start_broker(
        tmp_path / "var",
        f"sqlite:///{tmp_path / 'broker.db'}",
        BROKER__SERVER__AIO="true",
        BROKER__SERVER__MAX_WAITING_PER_CLIENT=str(WAITING),
    )
    yield harness
    harness.stop()


def _wait_until_done(calls: list[grpc.Future], count: int) -> list[grpc.Future]:
    """The calls that are done once ``count`` of them are (bounded: 30 s)."""
    deadline = time.monotonic() + 30
    while sum(call.done() for call in calls) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return [call for call in calls if call.done()]


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
        # Beyond this client's share, stalled calls are refused once they count as waiting.
        refused = _wait_until_done(calls, STALLED - WAITING)
        for call in refused:
            assert call.exception().code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "waiting for their request message" in call.exception().details()
        # With the share full: the same connection, another one, and a real call still answer.
        assert _health(stalled_channel) == health_pb2.HealthCheckResponse.SERVING
        with broker.channel() as other:
            assert _health(other) == health_pb2.HealthCheckResponse.SERVING
        answer = buyer.invoke("acme-models/echo@1.0.0", {"text": "hello"}, timeout=10)
        assert answer.answer == {"echo": "hello"}
        assert sum(call.done() for call in calls) == STALLED - WAITING  # the rest still wait
    finally:
        release.set()
        for call in calls:
            call.cancel()
        stalled_channel.close()


SYNC_SHARE = 4  # a quarter of the sync server's 16 threads
SYNC_STALLED = 40  # more than its threads, fewer than the 128 calls it lets run at once


def test_sync_server_stalled_calls_leave_other_clients_answering(
    tmp_path: Path, backend: FakeBackend
) -> None:
    harness = start_broker(
        tmp_path / "var",
        f"sqlite:///{tmp_path / 'broker.db'}",
        BROKER__SERVER__AIO="false",
        BROKER__SERVER__LISTEN="[::]:0",  # reached as 127.0.0.1 and as ::1: two client addresses
    )
    harness.client("acme-models", "vendor").register_model(echo_model(backend.target))
    other_buyer = BrokerClient(f"[::1]:{harness.server.port}", token=harness.token("bank", "buyer"))
    release = threading.Event()

    def never_sent() -> Iterator[bytes]:
        release.wait()
        yield from ()

    stalled_channel = harness.channel()  # 127.0.0.1
    stall = stalled_channel.stream_unary(INVOKE)
    calls = [stall.future(never_sent(), timeout=60) for _ in range(SYNC_STALLED)]
    try:
        refused = _wait_until_done(calls, SYNC_STALLED - SYNC_SHARE)
        assert len(refused) == SYNC_STALLED - SYNC_SHARE
        for call in refused:
            assert call.exception().code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "waiting for their request message" in call.exception().details()
        # The other address is answered: health, and a real call through the whole broker.
        with grpc.insecure_channel(f"[::1]:{harness.server.port}") as other:
            assert _health(other) == health_pb2.HealthCheckResponse.SERVING
        answer = other_buyer.invoke("acme-models/echo@1.0.0", {"text": "hello"}, timeout=10)
        assert answer.answer == {"echo": "hello"}
        # The stalling address itself, at its share, is answered for calls that send their
        # message (clients behind one proxy share an address).
        assert _health(stalled_channel) == health_pb2.HealthCheckResponse.SERVING
        assert sum(call.done() for call in calls) == SYNC_STALLED - SYNC_SHARE  # the share waits
    finally:
        release.set()
        for call in calls:
            call.cancel()
        other_buyer.close()
    waits = harness.server.message_waits
    assert waits is not None
    deadline = time.monotonic() + 10
    while waits.waiting_clients() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _health(stalled_channel) == health_pb2.HealthCheckResponse.SERVING
    stalled_channel.close()
    harness.stop()


@pytest.mark.parametrize("aio", ["true", "false"], ids=["aio", "sync"])
def test_a_request_message_that_never_comes_ends_the_call_in_time(tmp_path: Path, aio: str) -> None:
    harness = start_broker(
        tmp_path / "var",
        f"sqlite:///{tmp_path / 'broker.db'}",
        BROKER__SERVER__AIO=aio,
        BROKER__SERVER__REQUEST_MESSAGE_TIMEOUT_SECONDS="0.5",
    )
    release = threading.Event()

    def never_sent() -> Iterator[bytes]:
        release.wait()
        yield from ()

    try:
        with harness.channel() as channel:
            stall = channel.stream_unary(INVOKE)
            with pytest.raises(grpc.RpcError) as ended:
                stall(never_sent(), timeout=60)  # the broker ends it long before this deadline
            assert ended.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            assert "did not arrive within 0.5 s" in ended.value.details()
            # The stalled call's slot is free again: health still answers on this connection.
            assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
    finally:
        release.set()
        harness.stop()


@pytest.mark.parametrize("aio", ["true", "false"], ids=["aio", "sync"])
def test_a_call_without_a_request_message_is_invalid_argument(tmp_path: Path, aio: str) -> None:
    harness = start_broker(
        tmp_path / "var", f"sqlite:///{tmp_path / 'broker.db'}", BROKER__SERVER__AIO=aio
    )
    try:
        with harness.channel() as channel, pytest.raises(grpc.RpcError) as ended:
            channel.stream_unary(INVOKE)(iter(()), timeout=10)
        assert ended.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert ended.value.details() == "the call ended without its request message"
    finally:
        harness.stop()

"""``MessageWaits`` and ``SyncBridge``: the sync server's bounds on calls waiting for their message.

The server here is a real grpcio sync server on loopback with the real health and reflection
services behind the bridge (the public services an unauthenticated client reaches first), and
a thread pool as small as a test can stall. Stalled calls are made with ``stream_unary`` from a
generator that never yields, so the call is open but its request message never comes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from broker.auth.principal import Principal
from broker.errors import Unauthenticated
from broker.observability import metrics
from broker.server.interceptors import BoundaryInterceptor
from broker.server.message_wait import (
    WAITING_GRACE_SECONDS,
    MessageWaits,
    SyncBridge,
    client_address,
)

CHECK = "/grpc.health.v1.Health/Check"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
THREADS = 8
SHARE = 2  # a quarter of the threads, as [server] sync_waiting_share makes it
TOTAL = 3  # fewer than half the threads, so that two addresses can reach it here


def _no_token(metadata: tuple[tuple[str, str | bytes], ...]) -> Principal:
    raise Unauthenticated("no broker method is called here")


class Served:
    """A sync server with the bridge on ``[::]``: reached as 127.0.0.1 and as ::1."""

    def __init__(self, *, timeout: float = 30.0) -> None:
        self.waits = MessageWaits(share=SHARE, total=TOTAL, timeout=timeout)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=THREADS),
            interceptors=[SyncBridge(BoundaryInterceptor(_no_token), self.waits)],
        )
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), self.server)
        reflection.enable_server_reflection((health.SERVICE_NAME,), self.server)
        self.port = self.server.add_insecure_port("[::]:0")
        self.waits.start()
        self.server.start()

    def channel(self, host: str) -> grpc.Channel:
        return grpc.insecure_channel(f"{host}:{self.port}")

    def stop(self) -> None:
        self.server.stop(0).wait()
        self.waits.close()


@pytest.fixture
def served() -> Iterator[Served]:
    server = Served()
    yield server
    server.stop()


class Stalled:
    """Calls that never send their request message until ``release``."""

    def __init__(self, channel: grpc.Channel, method: str = CHECK) -> None:
        self._released = threading.Event()
        self._call = channel.stream_unary(method)

    def _never(self) -> Iterator[bytes]:
        self._released.wait()
        yield from ()

    def open(self, count: int) -> list[grpc.Future]:
        return [self._call.future(self._never(), timeout=60) for _ in range(count)]

    def release(self, calls: list[grpc.Future]) -> None:
        self._released.set()
        for call in calls:
            call.cancel()


def _done_when(calls: list[grpc.Future], count: int) -> list[grpc.Future]:
    deadline = time.monotonic() + 30
    while sum(call.done() for call in calls) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return [call for call in calls if call.done()]


def _check(channel: grpc.Channel) -> Any:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)


def test_one_client_cannot_hold_the_threads_that_others_need(served: Served) -> None:
    stalling = served.channel("127.0.0.1")
    stalled = Stalled(stalling)
    calls = stalled.open(THREADS * 3)  # every thread, and more calls queued behind them
    try:
        refused = _done_when(calls, len(calls) - SHARE)
        assert len(refused) == len(calls) - SHARE  # the rest still wait, each with a thread
        for call in refused:
            assert call.exception().code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "already waiting for their request message" in call.exception().details()
        # Another client address is answered by the threads the stalled client could not keep.
        with served.channel("[::1]") as other:
            assert _check(other).status == health_pb2.HealthCheckResponse.SERVING
        # Calls that send their message are answered whatever their address has waiting (all
        # clients behind one proxy share an address), on the stalling connection too ...
        assert _check(stalling).status == health_pb2.HealthCheckResponse.SERVING
        # ... while one more stalled call from it is turned away after the short grace.
        [extra] = stalled.open(1)
        assert extra.exception(timeout=10).code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "2 calls from this client are already waiting" in extra.exception().details()
        calls.append(extra)
        assert served.waits.waiting_clients() == {"ipv4:127.0.0.1": SHARE}
    finally:
        stalled.release(calls)
    deadline = time.monotonic() + 10
    while served.waits.waiting_clients() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert served.waits.waiting_clients() == {}  # released calls are uncounted
    stalling.close()


def test_several_addresses_together_hold_at_most_the_total(served: Served) -> None:
    first, second = served.channel("127.0.0.1"), served.channel("[::1]")
    stalled = [Stalled(first), Stalled(second)]
    calls_first = stalled[0].open(SHARE)
    try:
        _wait_counted(served, SHARE)
        calls_second = stalled[1].open(SHARE + 2)
        refused = _done_when(calls_second, SHARE + 2 - (TOTAL - SHARE))
        assert len(refused) == SHARE + 2 - (TOTAL - SHARE)
        for call in refused:
            assert call.exception().code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert call.exception().details() == (
                "3 calls are already waiting for their request message on this server; "
                "send each call's request with it"
            )
        assert served.waits.waiting_clients() == {"ipv4:127.0.0.1": SHARE, "ipv6:%5B::1%5D": 1}
        # The threads the total leaves free answer an address below its share.
        assert _check(second).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        stalled[0].release(calls_first)
        stalled[1].release(calls_second)
        first.close()
        second.close()


def _wait_counted(served: Served, count: int) -> None:
    deadline = time.monotonic() + 10
    while sum(served.waits.waiting_clients().values()) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sum(served.waits.waiting_clients().values()) == count


def test_the_same_server_without_the_bridge_is_stalled_by_one_client() -> None:
    """The attack above, without the bridge: the negative control that the test can fail."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=THREADS))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("[::]:0")
    server.start()
    stalling = grpc.insecure_channel(f"127.0.0.1:{port}")
    stalled = Stalled(stalling)
    calls = stalled.open(THREADS)
    try:
        time.sleep(WAITING_GRACE_SECONDS * 2)
        with grpc.insecure_channel(f"[::1]:{port}") as other, pytest.raises(grpc.RpcError) as hung:
            health_pb2_grpc.HealthStub(other).Check(health_pb2.HealthCheckRequest(), timeout=1)
        assert hung.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        stalled.release(calls)
        stalling.close()
        server.stop(0).wait()


def test_a_message_that_never_comes_ends_the_call_with_a_status_that_says_why() -> None:
    served = Served(timeout=0.5)
    try:
        with served.channel("127.0.0.1") as channel:
            stalled = Stalled(channel)
            [call] = stalled.open(1)
            try:
                error = call.exception(timeout=10)  # long before the call's own 60 s deadline
            finally:
                stalled.release([call])
            assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            assert error.details() == (
                "the call's request message did not arrive within 0.5 s of the call; "
                "send the request with the call"
            )
            assert _check(channel).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        served.stop()


def test_an_idle_reflection_stream_is_ended_too() -> None:
    served = Served(timeout=0.5)
    try:
        with served.channel("127.0.0.1") as channel:
            stalled = Stalled(channel, REFLECTION)
            stream = channel.stream_stream(
                REFLECTION, response_deserializer=reflection_pb2.ServerReflectionResponse.FromString
            )
            sent = threading.Event()

            def one_then_silence() -> Iterator[bytes]:
                yield reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
                sent.wait()

            replies = stream(one_then_silence(), timeout=60)
            first = next(replies)  # a request that comes is answered
            assert [s.name for s in first.list_services_response.service] == [health.SERVICE_NAME]
            with pytest.raises(grpc.RpcError) as ended:
                next(replies)  # the next request never comes
            sent.set()
            assert ended.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            stalled.release([])
    finally:
        served.stop()


def test_a_call_without_its_message_is_invalid_argument(served: Served) -> None:
    with served.channel("127.0.0.1") as channel, pytest.raises(grpc.RpcError) as ended:
        channel.stream_unary(CHECK)(iter(()), timeout=10)
    assert ended.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert ended.value.details() == "the call ended without its request message"


def test_calls_that_send_their_message_never_count(served: Served) -> None:
    """Many prompt calls at once from one address: none is refused, nothing stays counted."""
    with served.channel("127.0.0.1") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        calls = [stub.Check.future(health_pb2.HealthCheckRequest(), timeout=10) for _ in range(200)]
        assert all(c.result().status == health_pb2.HealthCheckResponse.SERVING for c in calls)
    assert served.waits.waiting_clients() == {}


def test_grpcio_still_has_the_request_slot_the_watcher_wakes_a_thread_through() -> None:
    """If grpcio renames these, the watcher falls back to cancelling: this says to look."""
    seen: dict[str, Any] = {}

    def behavior(request: bytes, context: grpc.ServicerContext) -> bytes:
        state = getattr(context, "_state", None)
        seen["request"] = hasattr(state, "request")
        seen["condition"] = isinstance(getattr(state, "condition", None), threading.Condition)
        return b""

    handler = grpc.unary_unary_rpc_method_handler(behavior)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t", {"m": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            channel.unary_unary("/t/m")(b"", timeout=5)
    finally:
        server.stop(0).wait()
    assert seen == {"request": True, "condition": True}


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:10.0.0.7:51234", "ipv4:10.0.0.7"),
        ("ipv6:[::1]:51234", "ipv6:[::1]"),
        ("ipv6:%5B::1%5D:51234", "ipv6:%5B::1%5D"),
        ("unix:/run/broker.sock", "unix:/run/broker.sock"),
    ],
)
def test_client_address_drops_only_the_port(peer: str, address: str) -> None:
    assert client_address(peer) == address


def test_health_watch_streams_stay_non_blocking_behind_the_bridge() -> None:
    """The broker's health servicer streams Watch without a thread; the bridge must keep that."""
    waits = MessageWaits(share=SHARE, total=TOTAL, timeout=30.0)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=THREADS),
        interceptors=[SyncBridge(BoundaryInterceptor(_no_token), waits)],
    )
    servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("[::]:0")
    waits.start()
    server.start()
    watching = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = health_pb2_grpc.HealthStub(watching)
        streams = [
            stub.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(THREADS * 2)
        ]
        for stream in streams:  # each got its first status: its request was read and answered
            assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
        with grpc.insecure_channel(f"[::1]:{port}") as other:
            reply = health_pb2_grpc.HealthStub(other).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert all(
            next(stream).status == health_pb2.HealthCheckResponse.NOT_SERVING for stream in streams
        )
        for stream in streams:
            stream.cancel()
    finally:
        watching.close()
        server.stop(0).wait()
        waits.close()


class FakeState:
    """grpcio's ``_RPCState`` as the watcher sees it: the request slot and its condition."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.request: Any = None


class FakeRequests:
    """grpcio's ``_RequestIterator``: start the receive, then wait (first) for the slot.

    ``before_wait`` runs before the reader waits (the thread is between registering its read
    and waiting); ``after_take`` after it took a message (before ``read`` deregisters it).
    """

    def __init__(
        self,
        state: FakeState,
        before_wait: Callable[[], None] = lambda: None,
        after_take: Callable[[], None] = lambda: None,
    ) -> None:
        self._state = state
        self._before_wait = before_wait
        self._after_take = after_take

    def __iter__(self) -> FakeRequests:
        return self

    def __next__(self) -> Any:
        self._before_wait()
        with self._state.condition:
            while True:
                self._state.condition.wait()
                request, self._state.request = self._state.request, None
                if request is not None:
                    break
        self._after_take()
        return request


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self, state: FakeState) -> None:
        self._state = state
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def peer(self) -> str:
        return "ipv4:10.0.0.7:40000"

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted


def _read_in_thread(waits: MessageWaits, requests: FakeRequests, context: FakeContext) -> Any:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["request"] = waits.read(requests, context)  # type: ignore[arg-type]
        except Aborted:
            result["aborted"] = context.aborted

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def _wait_open(waits: MessageWaits, count: int) -> None:
    """Until ``count`` reads are registered (their threads are in ``next``, or about to be)."""
    deadline = time.monotonic() + 10
    while len(waits._open) < count and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(waits._open) == count


def _sweep_until_done(waits: MessageWaits, thread: threading.Thread, when: float) -> None:
    """Sweep as the watcher does (again and again) until the reader has returned."""
    deadline = time.monotonic() + 10
    while thread.is_alive() and time.monotonic() < deadline:
        waits.sweep(when)
        thread.join(0.01)
    assert not thread.is_alive()


def test_an_ending_handed_over_before_the_reader_waits_still_wakes_it() -> None:
    """The sentinel lands while the reader is not yet waiting: the next sweep wakes it."""
    waits = MessageWaits(share=1, total=1, timeout=1.0)
    state = FakeState()
    entered, go = threading.Event(), threading.Event()

    def pause() -> None:
        entered.set()
        go.wait(10)

    thread, result = _read_in_thread(
        waits, FakeRequests(state, before_wait=pause), FakeContext(state)
    )
    assert entered.wait(10)
    waits.sweep(time.monotonic() + 5)  # past the timeout: ended, sentinel in the slot
    go.set()
    _sweep_until_done(waits, thread, time.monotonic() + 5)
    code, details = result["aborted"]
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert details.startswith("the call's request message did not arrive within 1 s")
    assert waits.waiting_clients() == {}


def test_a_message_taken_as_its_wait_ends_is_served_and_leaves_no_sentinel() -> None:
    """The watcher ends the wait just after the reader took its message: the call goes on,
    and the sentinel put in the slot meanwhile is taken out (a stream's next read would
    otherwise find it)."""
    waits = MessageWaits(share=1, total=1, timeout=1.0)
    state = FakeState()
    requests = FakeRequests(state, after_take=lambda: waits.sweep(time.monotonic() + 5))
    thread, result = _read_in_thread(waits, requests, FakeContext(state))
    _wait_open(waits, 1)
    with state.condition:
        state.request = b"the message"
        state.condition.notify_all()
    thread.join(10)
    assert result == {"request": b"the message"}
    assert state.request is None


def test_a_crowded_out_call_is_told_which_limit_and_counted_for_the_operator() -> None:
    metrics.enable(True)
    before = _ended_metric("client_share")
    try:
        with capture_logs() as logs:
            _crowd_out_one()
    finally:
        metrics.enable(False)
    assert _ended_metric("client_share") == before + 1
    summaries = [e for e in logs if e["event"] == "request_waits_ended"]
    assert [(e["log_level"], e["client_share"]) for e in summaries] == [("warning", 1)]


def _ended_metric(reason: str) -> float:
    sample = REGISTRY.get_sample_value("broker_request_waits_ended_total", {"reason": reason})
    return sample or 0.0


def _crowd_out_one() -> None:
    waits = MessageWaits(share=1, total=5, timeout=30.0)
    first, second = FakeState(), FakeState()
    holder, _ = _read_in_thread(waits, FakeRequests(first), FakeContext(first))
    _wait_open(waits, 1)  # registered first, so swept first
    crowded, result = _read_in_thread(waits, FakeRequests(second), FakeContext(second))
    _wait_open(waits, 2)
    start = time.monotonic()
    waits.sweep(start + WAITING_GRACE_SECONDS + 0.01)  # the first read counts; so would the
    _sweep_until_done(waits, crowded, start + WAITING_GRACE_SECONDS + 0.01)  # second: crowded
    code, details = result["aborted"]
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.startswith("1 calls from this client are already waiting")
    assert waits.waiting_clients() == {"ipv4:10.0.0.7": 1}
    with first.condition:
        first.request = b"late but welcome"
        first.condition.notify_all()
    holder.join(10)
    assert waits.waiting_clients() == {}
    waits.summarise(time.monotonic())
    waits.summarise(time.monotonic())  # nothing new: no second event

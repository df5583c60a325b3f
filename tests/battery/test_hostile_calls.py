"""Hostile calls against a running ``broker serve`` process (issue 16, item 2).

One broker process (SQLite) serves the whole module, as one node would face one attacker. Each
test sends something nobody meant to send (oversized messages and metadata, junk bytes where a
protobuf belongs, 10,000 streams opened and abandoned, slowloris connections, calls cancelled
at every stage) and checks the status the caller gets. The last test checks what must hold
afterwards: the process is alive and serving, its memory grew by less than a generous bound
(the figures go to ``battery-figures/hostile.json`` and SECURITY.md), and every call that reached
the policy decision has its outcome entry, every intent its outcome.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import orjson
import pytest

from broker._proto.broker.v1 import broker_pb2, broker_pb2_grpc, models_pb2
from tests.battery.node import (
    MIB,
    audit_gaps,
    audit_rows,
    calls_that_reached_policy,
    start_node,
    usage,
    write_figures,
)
from tests.battery.raw_http2 import RawConnection, close_all, connect, headers_without_end
from tests.integration.fake_openai import FakeOpenAI, start_fake_openai
from tests.integration.harness import FakeBackend, echo_model, start_fake_backend
from tests.integration.test_serve_process import ServeProcess
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.slow

MODEL = "acme-models/echo@1.0.0"
CHAT_MODEL = "chat-vendor/fake-chat@1.0.0"
INVOKE = "/broker.v1.Broker/Invoke"
STREAM = "/broker.v1.Broker/InvokeStream"
# Memory the broker (a supervisor and two serving processes here) may keep after the whole
# battery, over its warmed-up size: call pools that grew to their 16 threads each, and allocator
# arenas that grew for 4 MiB messages and 10,000 streams, are not returned to the OS (measured:
# about 145 MiB on the first round of streams, 1 to 2 MiB on each later round).
RSS_GROWTH_BOUND = 256 * MIB
# The leak check proper: a second round of 10,000 abandoned streams, once the first has grown
# the pools, may add at most this. A leak of 3.5 kB per stream would exceed it.
SECOND_ROUND_RSS_BOUND = 32 * MIB
ABANDONED_STREAMS = 10_000


@dataclass
class Node:
    """The broker under attack, its fakes, and what the module measured."""

    process: ServeProcess
    database_url: str
    backend: FakeBackend
    vendor: FakeOpenAI
    figures_path: Path
    rss_warm: int = 0
    figures: dict[str, object] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.process.port

    def token(self, tenant: str = "bank", role: str = "buyer") -> str:
        return self.process.issuer.mint(subject=f"{tenant}-svc", tenant=tenant, roles=[role])

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token()}"),)

    def channel(self, **options: int) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.port}", options=list(options.items()))

    def rss(self) -> int:
        return usage(self.process).rss_bytes

    def fds(self) -> int:
        return usage(self.process).open_fds

    def threads(self) -> int:
        return usage(self.process).threads

    @property
    def processes(self) -> int:
        return usage(self.process).processes

    def serves(self) -> bool:
        """Whether an Invoke is answered now (RESOURCE_EXHAUSTED: not yet)."""
        try:
            self.invoke_ok()
        except grpc.RpcError as exc:
            if _code(exc) is not grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            return False
        return True

    def invoke_ok(self) -> None:
        with self.channel() as channel:
            reply = broker_pb2_grpc.BrokerStub(channel).Invoke(
                broker_pb2.InvokeRequest(model=MODEL, json=b'{"text": "still here"}'),
                metadata=self.metadata(),
                timeout=30,
            )
        assert orjson.loads(reply.json) == {"echo": "still here"}


def _chat_model(base_url: str) -> models_pb2.Model:
    return models_pb2.Model(
        name="fake-chat",
        version="1.0.0",
        runtime=models_pb2.RUNTIME_OPENAI_HTTP,
        endpoint=models_pb2.Endpoint(target=base_url, remote_model="fake"),
        fields=[models_pb2.FieldSpec(path="/messages/*/content", type="string")],
    )


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root = tmp_path_factory.mktemp("hostile")
    database_url = f"sqlite:///{root / 'broker.db'}"
    process = start_node(root / "var", database_url)
    backend, vendor = start_fake_backend(), start_fake_openai()
    hostile = Node(process, database_url, backend, vendor, root / "var" / "battery-figures")
    try:
        with process.client("acme-models", "vendor") as client:
            client.register_model(echo_model(backend.target))
        with process.client("chat-vendor", "vendor") as client:
            client.register_model(_chat_model(vendor.base_url))
        # Warm up: caches, first allocations, and every call pool grown to its size (each
        # thread of it keeps its own database connection), so later growth is the attack's.
        for _ in range(3):
            warmers = [threading.Thread(target=hostile.invoke_ok) for _ in range(48)]
            for warmer in warmers:
                warmer.start()
            for warmer in warmers:
                warmer.join()
        hostile.rss_warm = hostile.rss()
        hostile.figures["rss_warm_mib"] = round(hostile.rss_warm / MIB, 1)
        hostile.figures["fds_warm"] = hostile.fds()
        hostile.figures["threads_warm"] = hostile.threads()
        yield hostile
    finally:
        process.terminate()
        backend.server.stop(0)
        vendor.stop()


def _code(call: object) -> grpc.StatusCode:
    code: grpc.StatusCode = call.code()  # type: ignore[attr-defined]
    return code


def test_a_message_over_the_server_limit_is_resource_exhausted(node: Node) -> None:
    payload = orjson.dumps({"text": "x" * (5 * MIB)})
    with node.channel(**{"grpc.max_send_message_length": -1}) as channel:
        stub = broker_pb2_grpc.BrokerStub(channel)
        for _ in range(5):
            with pytest.raises(grpc.RpcError) as exc:
                stub.Invoke(
                    broker_pb2.InvokeRequest(model=MODEL, json=payload),
                    metadata=node.metadata(),
                    timeout=30,
                )
            assert _code(exc.value) is grpc.StatusCode.RESOURCE_EXHAUSTED
    node.invoke_ok()


def test_a_payload_over_the_payload_limit_is_invalid_argument_saying_so(node: Node) -> None:
    payload = orjson.dumps({"text": "x" * (2 * MIB)})  # under 4 MiB of gRPC, over 1 MiB of JSON
    with node.channel() as channel, pytest.raises(grpc.RpcError) as exc:
        broker_pb2_grpc.BrokerStub(channel).Invoke(
            broker_pb2.InvokeRequest(model=MODEL, json=payload),
            metadata=node.metadata(),
            timeout=30,
        )
    assert _code(exc.value) is grpc.StatusCode.INVALID_ARGUMENT
    assert "bytes" in exc.value.details()  # type: ignore[attr-defined]


def test_oversized_metadata_is_refused_and_a_huge_token_is_unauthenticated(node: Node) -> None:
    request = broker_pb2.InvokeRequest(model=MODEL, json=b'{"text": "x"}')
    with node.channel() as channel:
        stub = broker_pb2_grpc.BrokerStub(channel)
        with pytest.raises(grpc.RpcError) as exc:
            stub.Invoke(
                request,
                metadata=(*node.metadata(), ("x-filler", "y" * (64 * 1024))),
                timeout=30,
            )
        # Over [server] max_metadata_bytes: grpc refuses the headers before any broker code.
        assert _code(exc.value) in {
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.INTERNAL,
        }, exc.value
        with pytest.raises(grpc.RpcError) as exc:
            stub.Invoke(
                request, metadata=(("authorization", "Bearer " + "a" * 12_000),), timeout=30
            )
        assert _code(exc.value) is grpc.StatusCode.UNAUTHENTICATED
        many = tuple((f"x-h{n}", "v" * 100) for n in range(400))
        with pytest.raises(grpc.RpcError) as exc:
            stub.Invoke(request, metadata=(*node.metadata(), *many), timeout=30)
        assert _code(exc.value) in {
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.INTERNAL,
        }, exc.value
    node.invoke_ok()


JUNK = [
    b"\xff\xff\xff\xff",  # a varint that never ends
    b"\x0a\xff\x01abc",  # a length prefix far past the end
    b"\x0b",  # a start-group tag with no end
    b"\x0a\x02\xc3\x28",  # field 1 (a string) holding invalid UTF-8
]
# Method, its request type, a role that may call it, and how much of JUNK applies (the last
# item is junk only where field 1 is a string).
JUNK_METHODS = [
    ("/broker.v1.Broker/Invoke", "broker.v1.InvokeRequest", "buyer", 4),
    ("/broker.v1.Broker/Preview", "broker.v1.PreviewRequest", "buyer", 4),
    ("/broker.v1.Registry/RegisterModel", "broker.v1.RegisterModelRequest", "vendor", 3),
    ("/broker.v1.Audit/GetEntry", "broker.v1.GetEntryRequest", "auditor", 3),
]


@pytest.mark.parametrize(("method", "message", "role", "junks"), JUNK_METHODS)
def test_junk_bytes_for_a_protobuf_are_invalid_argument_naming_the_message(
    node: Node, method: str, message: str, role: str, junks: int
) -> None:
    metadata = (("authorization", f"Bearer {node.token('bank', role)}"),)
    with node.channel() as channel:
        call = channel.unary_unary(method)
        for junk in JUNK[:junks]:
            with pytest.raises(grpc.RpcError) as exc:
                call(junk, metadata=metadata, timeout=30)
            assert _code(exc.value) is grpc.StatusCode.INVALID_ARGUMENT, (junk, exc.value)
            assert f"not a valid serialised {message}" in exc.value.details()  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as exc:  # junk and no token: authentication first
            call(JUNK[0], timeout=30)
        assert _code(exc.value) is grpc.StatusCode.UNAUTHENTICATED


def test_junk_bytes_on_a_server_streaming_method_are_invalid_argument(node: Node) -> None:
    with node.channel() as channel:
        call = channel.unary_stream(STREAM)
        with pytest.raises(grpc.RpcError) as exc:
            list(call(JUNK[0], metadata=node.metadata(), timeout=30))
    assert _code(exc.value) is grpc.StatusCode.INVALID_ARGUMENT


def _open_and_abandon(node: Node, count: int) -> dict[str, object]:
    """Open ``count`` streams over raw connections (1,000 each; every other connection also
    sends half a message), read the server's answers for a moment, then vanish."""
    token = node.token()
    half_message = b"\x00\x00\x00\x01\x00" + b"\x0a\x05" + b"acme"  # claims 256 bytes, sends 6
    connections: list[RawConnection] = []
    opened = 0
    while opened < count:
        connection = RawConnection(node.port)
        connections.append(connection)
        connection.read_for(0.2)  # the server's SETTINGS, with its stream limit if it has one
        partial = half_message if len(connections) % 2 else b""
        want = min(1000, count - opened)
        opened += connection.open_streams(want, STREAM, token, partial_message=partial)
    for connection in connections:
        connection.read_for(0.5)
    figures: dict[str, object] = {
        "opened": opened,
        "connections": len(connections),
        "refused_by_server_while_open": sum(len(c.statuses) for c in connections),
        "rss_mib_while_open": round(node.rss() / MIB, 1),
        "threads_while_open": node.threads(),
    }
    assert opened == count
    # grpc-status 8 (RESOURCE_EXHAUSTED) for those over the concurrent-call limit; nothing else.
    assert {s for c in connections for s in c.statuses} <= {"8"}
    for connection in connections:
        connection.abandon()
    # Until the server has noticed the vanished connections, their streams still hold its
    # concurrent-call slots (and other callers get RESOURCE_EXHAUSTED): see SECURITY.md.
    wait_until(node.serves, "the broker answers again once the streams' connections are gone")
    return figures


def test_ten_thousand_streams_opened_and_abandoned_twice_leave_nothing_behind(node: Node) -> None:
    """Streams whose request never comes: HEADERS only, or HEADERS and half a message. Those
    over the server's concurrent-call limit are refused at once; the rest hold a handler until
    the client vanishes. The first round grows the call pools (threads, each with its database
    connection) and the allocator's arenas to what such a load needs; the second round must
    then leave memory, descriptors and threads where the first left them."""
    first = _open_and_abandon(node, ABANDONED_STREAMS)
    time.sleep(1)  # settle: the last cancelled handlers return (no assertion on time)
    after_first = usage(node.process)
    second = _open_and_abandon(node, ABANDONED_STREAMS)
    wait_until(
        lambda: usage(node.process).open_fds <= after_first.open_fds + 4,
        "the abandoned connections' descriptors are closed",
    )
    wait_until(
        lambda: usage(node.process).threads <= after_first.threads + 4,
        "no thread is left behind by the abandoned streams",
    )
    after_second = usage(node.process)
    node.figures["abandoned_streams"] = {
        "rounds": [first, second],
        "rss_mib_after_first": round(after_first.rss_bytes / MIB, 1),
        "rss_mib_after_second": round(after_second.rss_bytes / MIB, 1),
        "fds_after_first": after_first.open_fds,
        "fds_after_second": after_second.open_fds,
    }
    assert after_second.rss_bytes - after_first.rss_bytes < SECOND_ROUND_RSS_BOUND, node.figures


def test_slowloris_connections_do_not_stop_service_and_are_released(node: Node) -> None:
    """Three kinds of slow client, 300 connections in all: silent after connecting, the
    connection preface dribbled a few bytes at a time, and a header block never finished."""
    token = node.token()
    fds_before = node.fds()
    silent = [connect(node.port) for _ in range(100)]
    dribbling = [connect(node.port) for _ in range(100)]
    unfinished = [connect(node.port) for _ in range(100)]
    preface = headers_without_end(node.port, INVOKE, token)
    for sock in unfinished:
        sock.sendall(preface)
    for offset in range(0, 12, 3):  # the first 12 bytes of the preface, 3 at a time
        for sock in dribbling:
            sock.sendall(preface[offset : offset + 3])
        node.invoke_ok()  # service goes on while all 300 are held open
    held = node.fds()
    for _ in range(10):
        node.invoke_ok()
    node.figures["slowloris"] = {
        "connections": 300,
        "fds_before": fds_before,
        "fds_while_held": held,
        "rss_mib_while_held": round(node.rss() / MIB, 1),
    }
    close_all([*silent, *dribbling, *unfinished])
    wait_until(lambda: node.fds() <= fds_before + 4, "the slow connections' descriptors close")
    node.invoke_ok()


def test_calls_cancelled_during_dispatch_stop_the_backend_call_and_are_audited(
    node: Node,
) -> None:
    node.backend.log.delay_seconds = 5.0
    try:
        with node.channel() as channel:
            stub = broker_pb2_grpc.BrokerStub(channel)
            for n in range(3):
                seen = len(node.backend.log.requests)
                future = stub.Invoke.future(
                    broker_pb2.InvokeRequest(model=MODEL, json=orjson.dumps({"text": f"c{n}"})),
                    metadata=node.metadata(),
                    timeout=30,
                )
                wait_until(lambda s=seen: len(node.backend.log.requests) > s, "the model is called")
                future.cancel()
                with pytest.raises(grpc.FutureCancelledError):
                    future.result()
            wait_until(lambda: len(node.backend.log.cancelled) >= 3, "the backend calls stop")
    finally:
        node.backend.log.delay_seconds = 0.0


def test_a_stream_cancelled_during_the_answer_stops_the_vendor_and_is_audited(node: Node) -> None:
    node.vendor.script = "slow"
    node.vendor.disconnected.clear()
    try:
        with node.channel() as channel:
            call = broker_pb2_grpc.BrokerStub(channel).InvokeStream(
                broker_pb2.InvokeRequest(
                    model=CHAT_MODEL,
                    json=orjson.dumps({"messages": [{"role": "user", "content": "go on"}]}),
                ),
                metadata=node.metadata(),
                timeout=60,
            )
            parts = []
            for message in call:
                parts.append(message.WhichOneof("part"))
                if parts.count("delta") >= 3:
                    break
            call.cancel()
            assert parts[0] == "decisions"
        wait_until(node.vendor.disconnected.is_set, "the vendor's stream is closed")
    finally:
        node.vendor.script = "echo"


def test_calls_cancelled_or_timed_out_at_random_stages_get_cancelled_or_deadline(
    node: Node,
) -> None:
    """Invoke and InvokeStream calls cancelled after 0 to 30 ms, or given deadlines of 1 to 30
    ms, land anywhere: authentication, classification, policy, the intent's commit, dispatch,
    the answer. Each ends OK, CANCELLED or DEADLINE_EXCEEDED; the final test checks the log."""
    rng = random.Random(16)
    seen: set[grpc.StatusCode] = set()
    lock = threading.Lock()

    def one(n: int) -> None:
        with node.channel() as channel:
            stub = broker_pb2_grpc.BrokerStub(channel)
            request = broker_pb2.InvokeRequest(model=MODEL, json=orjson.dumps({"text": f"r{n}"}))
            if n % 2:
                future = stub.Invoke.future(request, metadata=node.metadata(), timeout=30)
                time.sleep(rng.uniform(0, 0.03))
                future.cancel()
                try:
                    future.result()
                    code = grpc.StatusCode.OK
                except grpc.FutureCancelledError:
                    code = grpc.StatusCode.CANCELLED
                except grpc.RpcError as exc:
                    code = _code(exc)
            else:
                try:
                    stub.Invoke(request, metadata=node.metadata(), timeout=rng.uniform(0.001, 0.03))
                    code = grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    code = _code(exc)
            with lock:
                seen.add(code)

    workers = [threading.Thread(target=one, args=(n,)) for n in range(120)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert seen <= {
        grpc.StatusCode.OK,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }, seen
    node.invoke_ok()


def test_zz_afterwards_memory_is_bounded_and_every_call_past_policy_is_audited(
    node: Node,
) -> None:
    """Runs last (by name, in file order): what the battery left behind."""
    node.invoke_ok()
    assert node.process.process.poll() is None, "the broker died"
    rss_after = node.rss()
    node.figures["rss_after_mib"] = round(rss_after / MIB, 1)
    node.figures["rss_growth_mib"] = round((rss_after - node.rss_warm) / MIB, 1)
    node.figures["rss_growth_bound_mib"] = RSS_GROWTH_BOUND // MIB
    time.sleep(0.5)  # the last rpc events reach the log file (flushed per line; no assertion)
    reached = calls_that_reached_policy(node.process.events())
    rows = audit_rows(node.database_url)
    gaps = audit_gaps(rows, reached)
    node.figures["calls_past_policy"] = len(reached)
    node.figures["statuses_past_policy"] = sorted(set(reached.values()))
    node.figures["audit_entries"] = len(rows)
    write_figures(node.figures_path / "hostile.json", node.figures)
    print("hostile-call figures:", node.figures)
    assert gaps == {"no_outcome": [], "intent_without_outcome": []}, gaps
    assert {"CANCELLED", "OK"} <= set(reached.values())
    assert rss_after - node.rss_warm < RSS_GROWTH_BOUND, node.figures

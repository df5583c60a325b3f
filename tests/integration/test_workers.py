"""A node of several broker processes on one port (``[server] workers``), run as an operator would.

Each test starts ``broker serve`` with two workers. Clients open connections of their own (a
local subchannel pool per channel), so the kernel spreads them over both workers, and the JSON
log's ``worker`` field shows which worker served what.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from broker._proto.broker.v1 import policies_pb2, policies_pb2_grpc
from broker.audit.tables import audit_entries
from broker.client import BrokerClient
from broker.config import ConfigError, load_config
from broker.server.workers import CRASH_LOOP_LIMIT, WorkerSupervisor
from tests.integration.harness import FakeBackend, echo_model
from tests.integration.test_audit_crash_broker import _cli, assert_exported_log_verifies
from tests.integration.test_serve_process import ServeProcess
from tests.integration.waiting import wait_until

MODEL = "acme-models/echo@1.0.0"
REPO_POLICIES = Path(__file__).resolve().parents[2] / "policies"
CALLS_PER_CONNECTION = 5


def own_connection(node: ServeProcess) -> grpc.Channel:
    """A channel with a connection of its own (channels otherwise share one per target)."""
    return grpc.insecure_channel(
        f"127.0.0.1:{node.port}", options=[("grpc.use_local_subchannel_pool", 1)]
    )


def buyer(node: ServeProcess, **kwargs: object) -> BrokerClient:
    token = node.issuer.mint(subject="bank-svc", tenant="bank", roles=["buyer"])
    return BrokerClient("unused", token=token, channel=own_connection(node), **kwargs)  # type: ignore[arg-type]


def workers_that_served(node: ServeProcess, method: str) -> set[int]:
    return {
        int(str(e["worker"]))
        for e in node.events()
        if e.get("event") == "rpc" and method in str(e.get("method")) and "worker" in e
    }


@pytest.fixture
def two_workers(tmp_path: Path, database_url: str) -> Iterator[Callable[..., ServeProcess]]:
    """Starts ``broker serve`` with two workers; whatever a test leaves running is killed."""
    nodes: list[ServeProcess] = []

    def start(**env: str) -> ServeProcess:
        node = ServeProcess(tmp_path / "var", database_url, {"BROKER__SERVER__WORKERS": "2", **env})
        nodes.append(node)
        wait_until(lambda: any(e.get("event") == "node_started" for e in node.events()), "start")
        return node

    yield start
    for node in nodes:
        if node.process.poll() is None:  # its workers see the supervisor go, and drain
            node.process.kill()
            node.process.wait(timeout=30)
        node.close_log()


def node_pids(node: ServeProcess) -> dict[int, int]:
    started = next(e for e in node.events() if e.get("event") == "node_started")
    pids = started["pids"]
    assert isinstance(pids, dict)
    return {int(index): int(pid) for index, pid in pids.items()}


def test_both_workers_serve_calls_on_one_port(
    two_workers: Callable[..., ServeProcess], backend: FakeBackend
) -> None:
    node = two_workers()
    try:
        assert len(set(node_pids(node).values())) == 2
        with node.client("acme-models", "vendor") as vendor:
            vendor.register_model(echo_model(backend.target))
        for _ in range(40):
            if workers_that_served(node, "Invoke") == {0, 1}:
                break
            with buyer(node, max_attempts=1) as client:
                assert client.invoke(MODEL, {"text": "x"}).answer == {"echo": "x"}
        assert workers_that_served(node, "Invoke") == {0, 1}
    finally:
        assert node.terminate() == 0
    names = [(e.get("worker"), e["event"]) for e in node.events()]
    for worker in (0, 1):  # SIGTERM to the node drains every worker
        assert names.index((worker, "server_draining")) < names.index((worker, "server_stopped"))


def test_a_model_retired_through_one_worker_is_refused_by_every_worker_at_once(
    two_workers: Callable[..., ServeProcess], backend: FakeBackend
) -> None:
    # An hour of cache: only the node's shared change counter can make the other worker see it.
    node = two_workers(BROKER__REGISTRY__RESOLVE_CACHE_SECONDS="3600")
    try:
        with node.client("acme-models", "vendor") as vendor:
            vendor.register_model(echo_model(backend.target))
            for _ in range(40):  # both workers have the model in their cache
                if workers_that_served(node, "Invoke") == {0, 1}:
                    break
                with buyer(node, max_attempts=1) as client:
                    client.invoke(MODEL, {"text": "x"})
            assert workers_that_served(node, "Invoke") == {0, 1}
            vendor.retire_model(MODEL)
        refused_by: set[int] = set()
        for _ in range(40):
            with buyer(node, max_attempts=1) as client, pytest.raises(grpc.RpcError) as exc:
                client.invoke(MODEL, {"text": "x"})
            assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
            refused_by = {
                int(str(e["worker"]))
                for e in node.events()
                if e.get("event") == "rpc" and e.get("status") == "FAILED_PRECONDITION"
            }
            if refused_by == {0, 1}:
                break
        assert refused_by == {0, 1}
    finally:
        assert node.terminate() == 0


def active_revisions(node: ServeProcess, connections: int = 12) -> set[str]:
    token = node.issuer.mint(subject="sec", tenant="bank", roles=["policy-admin"])
    seen = set()
    for _ in range(connections):
        with own_connection(node) as channel:
            stub = policies_pb2_grpc.PoliciesStub(channel)
            answer = stub.GetActivePolicy(
                policies_pb2.GetActivePolicyRequest(),
                metadata=[("authorization", f"Bearer {token}")],
                timeout=10,
            )
            seen.add(answer.revision)
    return seen


def edit_bundle(bundle: Path, marker: str) -> None:
    rego = bundle / "broker" / "decision.rego"
    rego.write_text(rego.read_text() + f"\n# {marker}\n")


def activations_on_the_log(database_url: str) -> list[str]:
    """The revisions of the log's ``admin.policy.activated`` entries, oldest first."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(audit_entries.c.model)
                .where(audit_entries.c.kind == "admin.policy.activated")
                .order_by(audit_entries.c.leaf_index)
            )
            return [str(row.model) for row in rows]
    finally:
        engine.dispose()


def test_a_policy_reload_on_one_worker_or_a_sighup_reaches_every_worker(
    tmp_path: Path, two_workers: Callable[..., ServeProcess], database_url: str
) -> None:
    bundle = tmp_path / "policies"
    shutil.copytree(REPO_POLICIES, bundle)
    # The bundle is not watched: only the node's own propagation can bring a new revision.
    node = two_workers(
        BROKER__POLICY__BUNDLE_DIR=str(bundle),
        BROKER__POLICY__WATCH_INTERVAL_SECONDS="0",
    )
    try:
        (first,) = active_revisions(node)

        edit_bundle(bundle, "revision two")
        token = node.issuer.mint(subject="sec", tenant="bank", roles=["policy-admin"])
        with own_connection(node) as channel:
            reloaded = policies_pb2_grpc.PoliciesStub(channel).ReloadPolicy(
                policies_pb2.ReloadPolicyRequest(),
                metadata=[("authorization", f"Bearer {token}")],
                timeout=10,
            )
        assert reloaded.status == "loaded" and reloaded.revision != first
        wait_until(lambda: active_revisions(node) == {reloaded.revision}, "all have revision 2")

        edit_bundle(bundle, "revision three")
        node.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: (
                len(revisions := active_revisions(node)) == 1
                and revisions.isdisjoint({first, reloaded.revision})
            ),
            "every worker reloaded on SIGHUP",
        )
        (third,) = active_revisions(node)
    finally:
        assert node.terminate() == 0
    # Two workers swapped each revision in, at once on SIGHUP: each activation is one entry.
    assert activations_on_the_log(database_url) == [first, reloaded.revision, third]


def test_sigkill_of_a_worker_under_load_loses_no_answered_call(
    tmp_path: Path, two_workers: Callable[..., ServeProcess], backend: FakeBackend
) -> None:
    node = two_workers()
    with node.client("acme-models", "vendor") as vendor:
        vendor.register_model(echo_model(backend.target))
    victim = node_pids(node)[1]
    answered: list[str] = []
    failed: list[grpc.StatusCode] = []
    stop = threading.Event()

    def load() -> None:
        # A fresh connection every few calls: the kernel picks a worker per connection, so
        # eight long-lived ones could all land on one worker (1 run in 128).
        while not stop.is_set():
            with buyer(node, max_attempts=1) as client:
                for _ in range(CALLS_PER_CONNECTION):
                    if stop.is_set():
                        break
                    try:
                        answered.append(client.invoke(MODEL, {"text": "x"}, timeout=10).call_id)
                    except grpc.RpcError as exc:
                        failed.append(exc.code())  # type: ignore[attr-defined]
                        time.sleep(0.05)  # the channel reconnects, to a live worker

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        wait_until(
            lambda: len(answered) >= 40 and workers_that_served(node, "Invoke") == {0, 1},
            "both workers serve the load",
        )
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: any(e.get("event") == "worker_ready" for e in node.events()),
            "the killed worker is replaced",
        )
        count = len(answered)
        wait_until(lambda: len(answered) >= count + 40, "the load goes on after the restart")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    exited = [e for e in node.events() if e.get("event") == "worker_exited"]
    assert [(e["worker"], e["status"]) for e in exited] == [(1, -signal.SIGKILL)]
    assert set(failed) <= {grpc.StatusCode.UNAVAILABLE}  # cut calls: never a wrong answer

    try:
        token = node.issuer.mint(subject="auditor", tenant="ops", roles=["auditor"])
        query = _cli(node, token, "audit", "query", "--all", "--json")
        assert query.returncode == 0, query.stderr
        entries = [json.loads(line) for line in query.stdout.splitlines() if line.strip()]
        outcomes = {
            str(e["call_id"])
            for e in entries
            if e.get("kind") == "call.outcome" and e.get("status") == "OK"
        }
        intents = {str(e["call_id"]) for e in entries if e.get("kind") == "call.intent"}
        assert [c for c in answered if c not in outcomes] == []
        assert [c for c in answered if c not in intents] == []
        # The calls the killed worker was serving have an intent and no outcome: an officer
        # finds exactly those, and no answered call among them.
        with_outcome = {str(e["call_id"]) for e in entries if e.get("kind") == "call.outcome"}
        unknown = _cli(node, token, "audit", "query", "--all", "--json", "--without-outcome")
        assert unknown.returncode == 0, unknown.stderr
        listed = [json.loads(line) for line in unknown.stdout.splitlines() if line.strip()]
        assert {str(e["kind"]) for e in listed} <= {"call.intent"}
        assert {str(e["call_id"]) for e in listed} == intents - with_outcome
        assert not {str(e["call_id"]) for e in listed} & set(answered)

        assert_exported_log_verifies(node, token, tmp_path)
    finally:
        assert node.terminate() == 0


def test_a_node_whose_first_worker_cannot_start_exits_with_its_reason(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    environ = {
        "BROKER__DATA_DIR": str(tmp_path / "var"),
        "BROKER__SERVER__LISTEN": "127.0.0.1:0",
        "BROKER__POLICY__BUNDLE_DIR": str(tmp_path / "no-such-bundle"),
    }
    supervisor = WorkerSupervisor(load_config(None, environ), workers=2)
    assert supervisor.serve_forever() == 2  # the worker's configuration error status
    assert "no-such-bundle" in capfd.readouterr().err
    assert supervisor.pids == {}


def test_a_port_in_use_is_refused_rather_than_shared(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        environ = {"BROKER__DATA_DIR": str(tmp_path), "BROKER__SERVER__LISTEN": f"127.0.0.1:{port}"}
        supervisor = WorkerSupervisor(load_config(None, environ), workers=2)
        with pytest.raises(ConfigError, match="address in use"):
            supervisor.start()
        assert supervisor.pids == {}


_FLAKY_WORKER = """
import os, socket, sys, time
channel = socket.socket(fileno=int(os.environ["BROKER_WORKER_FD"]))
settings = channel.recv(1 << 20)
channel.sendall(b"ready 1\\n")
time.sleep(0.2)
sys.exit(3)
"""


def test_a_worker_that_keeps_dying_stops_the_node_instead_of_looping(tmp_path: Path) -> None:
    environ = {"BROKER__DATA_DIR": str(tmp_path), "BROKER__SERVER__LISTEN": "127.0.0.1:0"}
    supervisor = WorkerSupervisor(
        load_config(None, environ), workers=2, command=[sys.executable, "-c", _FLAKY_WORKER]
    )
    with capture_logs() as events:
        assert supervisor.serve_forever() == 1
    exits = [e for e in events if e["event"] == "worker_exited"]
    assert len(exits) >= CRASH_LOOP_LIMIT and {e["status"] for e in exits} == {3}
    assert any(e["event"] == "node_crash_loop" for e in events)
    assert supervisor.pids == {}


def test_workers_drain_and_exit_when_their_supervisor_is_killed(
    two_workers: Callable[..., ServeProcess],
) -> None:
    node = two_workers()
    workers = node_pids(node)
    node.process.send_signal(signal.SIGKILL)
    assert node.terminate() == -signal.SIGKILL
    wait_until(
        lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers.values()),
        "both workers have exited",
    )
    gone = {e.get("worker") for e in node.events() if e.get("event") == "supervisor_gone"}
    stopped = {e.get("worker") for e in node.events() if e.get("event") == "server_stopped"}
    assert gone == stopped == {0, 1}

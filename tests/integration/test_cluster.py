"""Three replicas on one PostgreSQL behind a real HAProxy, started by ``broker cluster``'s
launcher, under a mixed load of Invoke, InvokeStream and Preview calls; one replica SIGKILLed
mid-load and started again, then PostgreSQL stopped mid-load and started again.

PostgreSQL is a private server (``private_postgres``): the machine's shared one serves other
tests. Afterwards every answered call (Invoke, and InvokeStream to its summary) has its intent
and outcome entries, the exported log verifies offline (no gap, no duplicate index), every
record retained for an answered call (tenant ``bank`` keeps requests for two seconds) is deleted
exactly once, with one receipt and one deletion entry naming it, calls cut by the kill or the
database outage failed with UNAVAILABLE only (one exception, HAProxy's: a stream the SIGKILL cut
mid-answer ends UNKNOWN "Stream removed"; it had its intent entry), and after the outage the
replicas report SERVING again and calls succeed without anyone restarting them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import orjson
import pytest
import sqlalchemy as sa

from broker._proto.broker.v1 import broker_pb2, broker_pb2_grpc, models_pb2
from broker.auth.dev_issuer import DevIssuer
from broker.client import BrokerClient
from broker.cluster.launcher import Cluster, ClusterSettings, replica_health
from broker.config import DevIssuerConfig
from broker.demo.child import free_port
from broker.retention.tables import retention_receipts, retention_records
from broker.server.audit_hooks import DELETED
from tests.conftest import skip_or_fail
from tests.integration.fake_openai import FakeOpenAI, start_fake_openai
from tests.integration.harness import FakeBackend, echo_model
from tests.integration.private_postgres import PrivatePostgres
from tests.integration.test_audit_crash_broker import cli_at

MODEL = "acme-models/echo@1.0.0"
CHAT_MODEL = "chat-vendor/fake-chat@1.0.0"
REPO_POLICIES = Path(__file__).resolve().parents[2] / "policies"
WAIT_S = 90.0
REPLICAS = 3
_KINDS = ("Preview", "Invoke", "InvokeStream")


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.1)


@pytest.fixture
def fake_vendor() -> Iterator[FakeOpenAI]:
    """The streaming model's vendor: echoes the last user message in two chunks."""
    server = start_fake_openai()
    server.split = lambda text: [text[:2], text[2:]]
    yield server
    server.stop()


@pytest.fixture
def cluster(tmp_path: Path, private_pg: PrivatePostgres) -> Iterator[Cluster]:
    if shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists():
        skip_or_fail("haproxy is not installed (make system-deps)")
    policies = tmp_path / "policies"
    shutil.copytree(REPO_POLICIES, policies)
    data = orjson.loads((policies / "broker" / "data.json").read_bytes())
    data["tenants"]["bank"] = {"retention": {"request_ttl_s": 2, "response_ttl_s": 0}}
    (policies / "broker" / "data.json").write_bytes(orjson.dumps(data))
    settings = ClusterSettings(
        root=tmp_path / "cluster",
        replicas=REPLICAS,
        front=f"127.0.0.1:{free_port()}",
        replica_port=0,
        database_url=private_pg.url("broker"),
        policy_dir=policies,
        check_interval_ms=300,
        overrides={
            "server": {"shutdown_grace_seconds": 5.0},
            "retention": {"scheduler_interval_seconds": 0.5},
        },
    )
    started = Cluster(settings)
    try:
        started.start()
        yield started
    finally:
        started.stop()


def _token(cluster: Cluster, tenant: str, role: str) -> str:
    issuer = DevIssuer(cluster.settings.keys_dir, DevIssuerConfig(enabled=True))
    return issuer.mint(subject=f"{tenant}-svc", tenant=tenant, roles=[role])


def _cli(cluster: Cluster, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return cli_at(cluster.settings.front, token, *args)


def _chat_model(base_url: str) -> models_pb2.Model:
    return models_pb2.Model(
        name="fake-chat",
        version="1.0.0",
        description="scripted streaming chat model",
        runtime=models_pb2.RUNTIME_OPENAI_HTTP,
        endpoint=models_pb2.Endpoint(target=base_url, remote_model="fake"),
        fields=[models_pb2.FieldSpec(path="/messages/*/content", type="string")],
    )


def _health(cluster: Cluster) -> list[str]:
    """Every replica's own gRPC health, asked directly (not through the balancer)."""
    return [replica_health(cluster.pki, i, cluster.replica(i).port) for i in range(1, REPLICAS + 1)]


class Load:
    """Callers that send Invoke, InvokeStream and Preview in turn until stopped.

    An Invoke counts as answered when its reply arrived, an InvokeStream when its summary did;
    both keep the call id and the retained record ids the answer named. A streamed answer that
    is not the echo is kept in ``wrong``; every failure is kept with the phase of the test it
    happened in (and its method and message in ``details``, for the failure report). A stream
    that fails after its opening message (so the broker had admitted and audited the call) is
    kept in ``cut`` instead, with its phase, code, message and call id.
    """

    def __init__(self, front: str, token: str, callers: int = 4) -> None:
        self.front = front
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.invoked: list[str] = []
        self.streamed: list[str] = []
        self.retained: list[str] = []
        self.previews = 0
        self.wrong: list[str] = []
        self.details: list[str] = []
        self.failed: list[tuple[str, grpc.StatusCode]] = []
        self.cut: list[tuple[str, grpc.StatusCode, str, str]] = []
        self.phase = "steady"
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(callers)]

    @property
    def answered(self) -> int:
        return len(self.invoked) + len(self.streamed)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def wait_for_answers(self, more: int, what: str) -> None:
        count = self.answered
        wait_until(lambda: self.answered >= count + more, what)

    def _run(self, seed: int) -> None:
        with grpc.insecure_channel(self.front) as channel:
            stub = broker_pb2_grpc.BrokerStub(channel)
            echo = orjson.dumps({"text": "hi"})
            chat = orjson.dumps({"messages": [{"role": "user", "content": "hello there"}]})
            turn = seed
            while not self._stop.is_set():
                turn += 1
                try:
                    if turn % 3 == 0:
                        stub.Preview(
                            broker_pb2.PreviewRequest(model=MODEL, json=echo),
                            metadata=self.metadata,
                            timeout=10,
                        )
                        self.previews += 1
                    elif turn % 3 == 1:
                        reply = stub.Invoke(
                            broker_pb2.InvokeRequest(model=MODEL, json=echo),
                            metadata=self.metadata,
                            timeout=10,
                        )
                        self.retained.extend(reply.retained_record_ids)
                        self.invoked.append(reply.call_id)
                    else:
                        self._stream(stub, chat)
                except grpc.RpcError as exc:
                    code, details = exc.code(), exc.details()  # type: ignore[attr-defined]
                    self.failed.append((self.phase, code))
                    self.details.append(f"{_KINDS[turn % 3]}: {code.name} {details}")
                    time.sleep(0.05)

    def _stream(self, stub: broker_pb2_grpc.BrokerStub, chat: bytes) -> None:
        request = broker_pb2.InvokeRequest(model=CHAT_MODEL, json=chat)
        text, call_id = "", ""
        try:
            for message in stub.InvokeStream(request, metadata=self.metadata, timeout=10):
                part = message.WhichOneof("part")
                if part == "decisions":
                    call_id = message.decisions.call_id
                elif part == "delta":
                    delta = orjson.loads(message.delta)
                    text += "".join(c["delta"].get("content", "") for c in delta["choices"])
                elif part == "summary":
                    if text != "hello there":  # checked by the test, not in this thread
                        self.wrong.append(text)
                    self.retained.extend(message.summary.retained_record_ids)
                    self.streamed.append(message.summary.call_id)
        except grpc.RpcError as exc:
            if not call_id:
                raise
            code, details = exc.code(), exc.details()  # type: ignore[attr-defined]
            self.cut.append((self.phase, code, details, call_id))
            time.sleep(0.05)


def test_mixed_load_survives_a_replica_sigkill_and_a_database_restart(
    cluster: Cluster,
    backend: FakeBackend,
    fake_vendor: FakeOpenAI,
    private_pg: PrivatePostgres,
    tmp_path: Path,
) -> None:
    front = cluster.settings.front
    with BrokerClient(front, token=_token(cluster, "acme-models", "vendor")) as vendor:
        vendor.register_model(echo_model(backend.target))
    with BrokerClient(front, token=_token(cluster, "chat-vendor", "vendor")) as vendor:
        vendor.register_model(_chat_model(fake_vendor.base_url))
    load = Load(front, _token(cluster, "bank", "buyer"))
    load.start()
    try:
        wait_until(lambda: len(load.invoked) >= 20 and len(load.streamed) >= 10, "load goes")

        load.phase = "replica killed"
        cluster.replica(2).kill()
        load.wait_for_answers(20, "the other replicas carry the load")
        cluster.restart_replica(2)
        wait_until(
            lambda: cluster.balancer_states().get("replica-2") == "UP", "replica-2 back in rotation"
        )
        load.phase = "steady"
        load.wait_for_answers(20, "the load goes on after the replica's restart")

        # A restart in two steps, so that the load certainly meets the outage (a bare
        # `pg_ctl restart` can fit between two calls): down until every replica has noticed
        # and a call has failed, then up again.
        load.phase = "database down"
        private_pg.stop("fast")
        wait_until(lambda: set(_health(cluster)) == {"NOT_SERVING"}, "replicas see it down")
        wait_until(lambda: any(p == "database down" for p, _ in load.failed), "a call fails")
        private_pg.start()
        load.phase = "database back"
        wait_until(lambda: set(_health(cluster)) == {"SERVING"}, "replicas serve again")
        wait_until(
            lambda: set(cluster.balancer_states().values()) == {"UP"}, "all replicas in rotation"
        )
        load.phase = "steady"
        load.wait_for_answers(30, "calls succeed again after the database restart")
    finally:
        load.stop()
    assert load.previews > 0
    assert load.wrong == []
    # A stream cut mid-answer by the SIGKILL reaches the caller as HAProxy ends it: with an
    # empty DATA frame with END_STREAM and no gRPC trailers (HAProxy 2.6 does so when the
    # server side dies), which gRPC reports as UNKNOWN "Stream removed". Only then, and only
    # there: a replica that lost its database is alive and ends its streams with UNAVAILABLE.
    cut_by_kill = {
        (code, "Stream removed" in details)
        for phase, code, details, _ in load.cut
        if phase == "replica killed"
    }
    unavailable, removed = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN
    assert cut_by_kill <= {(unavailable, False), (removed, True)}, load.cut
    assert {c for p, c, _, _ in load.cut if p != "replica killed"} <= {unavailable}, load.cut
    assert {code for _, code in load.failed} <= {grpc.StatusCode.UNAVAILABLE}, (
        Counter(load.failed),
        Counter(load.details),
    )

    engine = sa.create_engine(cluster.settings.database_url)
    try:

        def all_deleted_and_delivered() -> bool:
            with engine.connect() as conn:
                left = conn.execute(
                    sa.select(sa.func.count()).select_from(retention_records)
                ).scalar_one()
                undelivered = conn.execute(
                    sa.select(sa.func.count())
                    .select_from(retention_receipts)
                    .where(retention_receipts.c.delivered_us.is_(None))
                ).scalar_one()
            return int(left) == 0 and int(undelivered) == 0

        wait_until(all_deleted_and_delivered, "every retained record is deleted and audited")
        with engine.connect() as conn:
            receipts = Counter(conn.execute(sa.select(retention_receipts.c.record_id)).scalars())
    finally:
        engine.dispose()

    auditor = _token(cluster, "ops", "auditor")
    query = _cli(cluster, auditor, "audit", "query", "--all", "--json")
    assert query.returncode == 0, query.stderr
    entries = [json.loads(line) for line in query.stdout.splitlines() if line.strip()]
    intents = {str(e["call_id"]) for e in entries if e.get("kind") == "call.intent"}
    outcomes = {
        str(e["call_id"])
        for e in entries
        if e.get("kind") == "call.outcome" and e.get("status") == "OK"
    }
    answered = load.invoked + load.streamed
    assert [c for c in answered if c not in intents] == []
    assert [c for c in answered if c not in outcomes] == []
    # A stream that delivered part of an answer and then failed was audited when admitted.
    assert [c for *_, c in load.cut if c not in intents] == []

    # Retention, record by record: each record an answer named has one receipt and one
    # deletion entry naming it; no record is deleted twice, none without its receipt.
    deleted = Counter(str(e["target"]) for e in entries if e.get("kind") == DELETED)
    retained = set(load.retained)
    assert retained, "the policy retained no request"
    assert {r: receipts[r] for r in retained if receipts[r] != 1} == {}
    assert {r: deleted[r] for r in retained if deleted[r] != 1} == {}
    assert {r: n for r, n in deleted.items() if n != 1} == {}
    assert set(deleted) == set(receipts)

    checkpoint = _cli(cluster, auditor, "audit", "checkpoint", "--vkey-out", str(tmp_path / "v"))
    assert checkpoint.returncode == 0, checkpoint.stderr
    export = _cli(cluster, auditor, "audit", "export", "-o", str(tmp_path / "log.jsonl"))
    assert export.returncode == 0, export.stderr
    verify = _cli(
        cluster,
        auditor,
        "audit",
        "verify",
        str(tmp_path / "log.jsonl"),
        "--log-key",
        str(tmp_path / "v"),
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.startswith("OK complete log")
    indexes = [
        json.loads(line)["leaf_index"]
        for line in (tmp_path / "log.jsonl").read_text().splitlines()
        if line.strip() and "leaf_index" in line
    ]
    assert len(indexes) == len(set(indexes))

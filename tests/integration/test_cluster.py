"""Three replicas on one PostgreSQL behind a real HAProxy, started by ``broker cluster``'s
launcher, under a mixed load; one replica SIGKILLed mid-load and started again.

Afterwards every answered call has its intent and outcome entries, the exported log verifies
offline (no gap, no duplicate index), every retained record (tenant ``bank`` keeps requests
for two seconds) is deleted exactly once with one receipt and one deletion entry, and calls cut
by the kill failed with UNAVAILABLE only.

Not yet here (issue 13, item 3): InvokeStream in the mix (the echo OIP model cannot stream:
FAILED_PRECONDITION; it needs tests/integration/fake_openai.py's backend) and a restart of
PostgreSQL mid-load on a private instance.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import orjson
import pytest
import sqlalchemy as sa

from broker._proto.broker.v1 import broker_pb2, broker_pb2_grpc
from broker.auth.dev_issuer import DevIssuer
from broker.client import BrokerClient
from broker.cluster.launcher import Cluster, ClusterSettings
from broker.config import DevIssuerConfig
from broker.demo.child import free_port
from broker.retention.tables import retention_receipts, retention_records
from tests.conftest import skip_or_fail
from tests.integration.harness import FakeBackend, echo_model

MODEL = "acme-models/echo@1.0.0"
REPO_POLICIES = Path(__file__).resolve().parents[2] / "policies"
WAIT_S = 90.0


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.1)


@pytest.fixture
def cluster(tmp_path: Path, fresh_postgres_url: str) -> Iterator[Cluster]:
    if shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists():
        skip_or_fail("haproxy is not installed (make system-deps)")
    policies = tmp_path / "policies"
    shutil.copytree(REPO_POLICIES, policies)
    data = orjson.loads((policies / "broker" / "data.json").read_bytes())
    data["tenants"]["bank"] = {"retention": {"request_ttl_s": 2, "response_ttl_s": 0}}
    (policies / "broker" / "data.json").write_bytes(orjson.dumps(data))
    settings = ClusterSettings(
        root=tmp_path / "cluster",
        replicas=3,
        front=f"127.0.0.1:{free_port()}",
        replica_port=0,
        database_url=fresh_postgres_url,
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
    env = {**os.environ, "BROKER_TARGET": cluster.settings.front, "BROKER_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-m", "broker.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_mixed_load_survives_a_replica_sigkill_with_every_answer_audited(
    cluster: Cluster, backend: FakeBackend, tmp_path: Path
) -> None:
    front = cluster.settings.front
    with BrokerClient(front, token=_token(cluster, "acme-models", "vendor")) as vendor:
        vendor.register_model(echo_model(backend.target))
    buyer = _token(cluster, "bank", "buyer")
    metadata = (("authorization", f"Bearer {buyer}"),)
    answered: list[str] = []
    previews = [0]
    failed: list[grpc.StatusCode] = []
    stop = threading.Event()

    def load(seed: int) -> None:
        with grpc.insecure_channel(front) as channel:
            stub = broker_pb2_grpc.BrokerStub(channel)
            request = broker_pb2.InvokeRequest(model=MODEL, json=orjson.dumps({"text": "hi"}))
            turn = seed
            while not stop.is_set():
                turn += 1
                try:
                    if turn % 3 == 0:
                        stub.Preview(
                            broker_pb2.PreviewRequest(model=MODEL, json=request.json),
                            metadata=metadata,
                            timeout=10,
                        )
                        previews[0] += 1
                    else:
                        answered.append(stub.Invoke(request, metadata=metadata, timeout=10).call_id)
                except grpc.RpcError as exc:
                    failed.append(exc.code())  # type: ignore[attr-defined]
                    time.sleep(0.05)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(answered) >= 30, "the load gets going")
        victim = cluster.replica(2)
        victim.kill()
        count = len(answered)
        wait_until(lambda: len(answered) >= count + 20, "the other replicas carry the load")
        cluster.restart_replica(2)
        wait_until(
            lambda: cluster.balancer_states().get("replica-2") == "UP", "replica-2 back in rotation"
        )
        count = len(answered)
        wait_until(lambda: len(answered) >= count + 30, "the load goes on after the restart")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert previews[0] > 0
    assert set(failed) <= {grpc.StatusCode.UNAVAILABLE}, Counter(failed)

    engine = sa.create_engine(cluster.settings.database_url)
    try:

        def all_deleted() -> bool:
            with engine.connect() as conn:
                left = conn.execute(
                    sa.select(sa.func.count()).select_from(retention_records)
                ).scalar_one()
            return int(left) == 0

        wait_until(all_deleted, "every retained record is deleted")
        with engine.connect() as conn:
            receipts = Counter(conn.execute(sa.select(retention_receipts.c.record_id)).scalars())
    finally:
        engine.dispose()
    assert receipts and set(receipts.values()) == {1}

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
    assert [c for c in answered if c not in intents] == []
    assert [c for c in answered if c not in outcomes] == []
    # One deletion entry per receipt (by count: matching ids needs the query's target field).
    deleted = [e for e in entries if e.get("kind") == "admin.retention.deleted"]
    assert len(deleted) == len(receipts)

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

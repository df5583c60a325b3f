"""Two broker replicas on one PostgreSQL database: what one changes, the other enforces.

Each test starts two in-process brokers (``build_server``) with their own data directories and
policy bundle copies, one shared ``keys_dir`` and one fresh PostgreSQL database, as two hosts of
one cluster would be. Caches are made to last an hour, so only the change feed (LISTEN/NOTIFY)
can make the other replica see a change in time.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess

import grpc
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from broker._proto.broker.v1 import (
    policies_pb2,
    policies_pb2_grpc,
    retention_pb2,
    retention_pb2_grpc,
)
from broker.enforce.keys import TenantKeys
from broker.enforce.vault import PendingToken, TokenVault, new_token
from broker.retention.rootkey import generate_root_key_file
from broker.storage.db import create_engine_for
from tests.integration.harness import BrokerHarness, FakeBackend, echo_model, start_broker
from tests.integration.test_audit_crash_broker import cli_at
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.postgres

MODEL = "acme-models/echo@1.0.0"
REPO_POLICIES = Path(__file__).resolve().parents[2] / "policies"
HOUR = "3600"


@pytest.fixture
def replicas(tmp_path: Path, fresh_postgres_url: str) -> Iterator[Callable[..., BrokerHarness]]:
    """``start(name)`` starts a replica; every replica started is stopped afterwards."""
    started: list[BrokerHarness] = []

    def start(name: str, **env: str) -> BrokerHarness:
        bundle = tmp_path / f"{name}-policies"
        if not bundle.exists():
            shutil.copytree(REPO_POLICIES, bundle)
        replica = start_broker(
            tmp_path / name,
            fresh_postgres_url,
            BROKER__KEYS_DIR=str(tmp_path / "keys"),
            BROKER__POLICY__BUNDLE_DIR=str(bundle),
            BROKER__POLICY__WATCH_INTERVAL_SECONDS="0",
            BROKER__REGISTRY__RESOLVE_CACHE_SECONDS=HOUR,
            BROKER__REGISTRY__RESOLVE_CACHE_NEGATIVE_SECONDS=HOUR,
            BROKER__SERVER__DATABASE_PROBE_SECONDS="0.2",
            **env,
        )
        started.append(replica)
        return replica

    yield start
    for replica in started:
        replica.stop()


def invoke_code(replica: BrokerHarness) -> grpc.StatusCode:
    with replica.client("bank", "buyer", max_attempts=1) as buyer:
        try:
            buyer.invoke(MODEL, {"text": "x"}, timeout=10)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


def test_a_model_registered_or_retired_on_one_replica_is_served_or_refused_by_the_other(
    replicas: Callable[[str], BrokerHarness], backend: FakeBackend
) -> None:
    first, second = replicas("a"), replicas("b")
    assert invoke_code(second) == grpc.StatusCode.NOT_FOUND  # and cached for an hour

    with first.client("acme-models", "vendor") as vendor:
        vendor.register_model(echo_model(backend.target))
        wait_until(lambda: invoke_code(second) == grpc.StatusCode.OK, "b serves the new model")
        vendor.retire_model(MODEL)
    wait_until(lambda: invoke_code(second) == grpc.StatusCode.FAILED_PRECONDITION, "b refuses it")


def active_revision(replica: BrokerHarness) -> str:
    with replica.channel() as channel:
        answer = policies_pb2_grpc.PoliciesStub(channel).GetActivePolicy(
            policies_pb2.GetActivePolicyRequest(),
            metadata=[("authorization", f"Bearer {replica.token('bank', 'policy-admin')}")],
            timeout=10,
        )
    return str(answer.revision)


def reload_policy(replica: BrokerHarness) -> policies_pb2.ReloadPolicyResponse:
    with replica.channel() as channel:
        return policies_pb2_grpc.PoliciesStub(channel).ReloadPolicy(
            policies_pb2.ReloadPolicyRequest(),
            metadata=[("authorization", f"Bearer {replica.token('bank', 'policy-admin')}")],
            timeout=10,
        )


def audited_revisions(database_url: str, call_id: str) -> set[str]:
    engine = create_engine_for(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT entry FROM audit_entries WHERE call_id = :c"), {"c": call_id}
            ).all()
    finally:
        engine.dispose()
    entries = [json.loads(row.entry) for row in rows]
    assert {e["kind"] for e in entries} >= {"call.intent", "call.outcome"}
    return {e["policy_revision"] for e in entries if "policy_revision" in e}


def test_a_policy_activated_on_one_replica_decides_on_every_replica_and_is_never_rolled_back(
    tmp_path: Path,
    fresh_postgres_url: str,
    replicas: Callable[[str], BrokerHarness],
    backend: FakeBackend,
) -> None:
    first, second = replicas("a"), replicas("b")
    original = active_revision(first)
    assert active_revision(second) == original

    rego = tmp_path / "a-policies" / "broker" / "decision.rego"
    rego.write_text(rego.read_text() + "\n# revision two, on a's disk only\n")
    reloaded = reload_policy(first)
    assert reloaded.status == "loaded" and reloaded.revision != original
    wait_until(lambda: active_revision(second) == reloaded.revision, "b adopts revision two")

    with first.client("acme-models", "vendor") as vendor:
        vendor.register_model(echo_model(backend.target))
    with second.client("bank", "buyer") as buyer:
        call_id = buyer.invoke(MODEL, {"text": "x"}).call_id
    assert audited_revisions(fresh_postgres_url, call_id) == {reloaded.revision}

    # A replica that starts with the bundle the cluster has since replaced does not roll back.
    late = replicas("c")
    assert active_revision(late) == reloaded.revision
    assert active_revision(first) == active_revision(second) == reloaded.revision

    # An explicit reload on b (its disk still holds revision one) is the operator's choice.
    assert reload_policy(second).revision == original
    wait_until(lambda: active_revision(first) == original, "a follows b's explicit reload")


def test_tokens_sealed_by_one_replica_restore_on_the_other(
    tmp_path: Path, fresh_postgres_url: str, replicas: Callable[[str], BrokerHarness]
) -> None:
    replicas("a")  # creates the shared keys and the schema
    engines = [create_engine_for(fresh_postgres_url) for _ in range(2)]
    try:
        sealer, restorer = (
            TokenVault(engine, TenantKeys.load_or_create(tmp_path / "keys")) for engine in engines
        )
        token = new_token()
        sealer.store("bank", "call-1", [PendingToken(token, "DE89 3704 0044 0532 0130 00")])
        assert restorer.resolve("bank", "call-1", [token]) == {token: "DE89 3704 0044 0532 0130 00"}
        assert restorer.resolve("other-bank", "call-1", [token]) == {}  # never across tenants
    finally:
        for engine in engines:
            engine.dispose()


def test_both_replicas_sign_checkpoints_that_verify_under_the_one_log_key(
    tmp_path: Path, replicas: Callable[[str], BrokerHarness], backend: FakeBackend
) -> None:
    first, second = replicas("a"), replicas("b")
    with first.client("acme-models", "vendor") as vendor:
        vendor.register_model(echo_model(backend.target))
    for replica in (first, second, first, second):
        assert invoke_code(replica) == grpc.StatusCode.OK
    assert not (tmp_path / "a" / "audit-log-key").exists()  # keys live in keys_dir only
    for replica, name in ((first, "a"), (second, "b")):
        replica.server.audit.checkpoint_now()
        token = replica.token("ops", "auditor", subject="auditor")
        work = tmp_path / f"verify-{name}"
        work.mkdir()

        def cli(
            *args: str, target: str = replica.target, token: str = token
        ) -> CompletedProcess[str]:
            return cli_at(target, token, *args)

        assert cli("audit", "checkpoint", "--vkey-out", str(work / "v")).returncode == 0
        assert cli("audit", "export", "-o", str(work / "log.jsonl")).returncode == 0
        verify = cli("audit", "verify", str(work / "log.jsonl"), "--log-key", str(work / "v"))
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert verify.stdout.startswith("OK complete log")
    assert (tmp_path / "verify-a" / "v").read_text() == (tmp_path / "verify-b" / "v").read_text()


def health_status(replica: BrokerHarness) -> int:
    with replica.channel() as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    return int(answer.status)


def test_a_replica_that_loses_its_database_reports_not_serving_and_recovers(
    fresh_postgres_url: str,
    postgres_admin_url: str,
    replicas: Callable[[str], BrokerHarness],
    backend: FakeBackend,
) -> None:
    replica = replicas("a")
    with replica.client("acme-models", "vendor") as vendor:
        vendor.register_model(echo_model(backend.target))
    assert health_status(replica) == health_pb2.HealthCheckResponse.SERVING
    name = sa.make_url(fresh_postgres_url).database
    admin = sa.create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:  # the database goes away for this replica, and only it
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"
                ),
                {"d": name},
            )
        wait_until(
            lambda: health_status(replica) == health_pb2.HealthCheckResponse.NOT_SERVING,
            "health says NOT_SERVING",
        )
        assert invoke_code(replica) == grpc.StatusCode.UNAVAILABLE  # fail closed, never answered
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        wait_until(
            lambda: health_status(replica) == health_pb2.HealthCheckResponse.SERVING,
            "health says SERVING again",
        )
        wait_until(lambda: invoke_code(replica) == grpc.StatusCode.OK, "calls are answered again")
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


def test_a_hold_placed_on_one_replica_keeps_a_record_from_an_erasure_ordered_on_the_other(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    replicas: Callable[..., BrokerHarness],
    backend: FakeBackend,
) -> None:
    root_key = tmp_path_factory.mktemp("secrets") / "root.key"
    generate_root_key_file(root_key)
    first = replicas("a", BROKER__RETENTION__ROOT_KEY_FILE=str(root_key))
    second = replicas("b", BROKER__RETENTION__ROOT_KEY_FILE=str(root_key))
    with first.client("acme-models", "vendor") as vendor:
        vendor.register_model(echo_model(backend.target))
    # The shipped policy keeps tenant acme's request and answer.
    kept = [first.client("acme", "buyer").invoke(MODEL, {"text": "x"}) for _ in range(2)]
    held_call, free_call = (call.call_id for call in kept)
    officer = (("authorization", f"Bearer {second.token('acme', 'compliance')}"),)
    with second.channel() as channel:
        stub = retention_pb2_grpc.RetentionStub(channel)
        listed = stub.ListRecords(retention_pb2.ListRecordsRequest(), metadata=officer, timeout=10)
        held_ids = [r.record_id for r in listed.records if r.call_id == held_call]
        assert len(held_ids) == 2 and len(listed.records) == 4
        for record_id in held_ids:
            target = retention_pb2.HoldTarget(record_id=record_id)
            stub.Hold(retention_pb2.HoldRequest(target=target, reason="case 7"), metadata=officer)
    with first.channel() as channel:  # the erasure is ordered on the other replica
        erased = retention_pb2_grpc.RetentionStub(channel).Erase(
            retention_pb2.EraseRequest(reason="request 12"),
            metadata=(("authorization", f"Bearer {first.token('acme', 'compliance')}"),),
            timeout=30,
        )
    assert (erased.records_erased, erased.records_held) == (2, 2)
    with second.channel() as channel:
        left = retention_pb2_grpc.RetentionStub(channel).ListRecords(
            retention_pb2.ListRecordsRequest(), metadata=officer, timeout=10
        )
    assert sorted(r.record_id for r in left.records) == sorted(held_ids)
    assert all(r.held for r in left.records) and free_call not in {r.call_id for r in left.records}

"""Rate limits hold across broker processes: one node of two `broker serve` workers.

The token bucket lives in the database, so two worker processes (real processes on one port,
as an operator runs them) admit together no more than one bucket's worth. The rate is set so
low (one call per 1,000 s) that nothing refills during the test: exactly ``burst`` calls may
succeed, whatever the timing, and every other one is RESOURCE_EXHAUSTED with QuotaFailure and
RetryInfo details, audited as refused and billed nothing. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from broker.client import BrokerClient
from broker.storage.db import create_engine_for
from tests.integration.harness import FakeBackend, echo_model
from tests.integration.test_serve_process import ServeProcess
from tests.integration.test_workers import own_connection, workers_that_served
from tests.integration.waiting import wait_until

MODEL = "acme-models/echo@1.0.0"
BURST = 6
QUOTAS = json.dumps(
    [
        {"tenant": "bank", "model": "acme-models/echo", "calls_per_second": 0.001, "burst": BURST},
        {"tenant": "shop", "monthly_spend_micros": 5000, "currency": "USD"},
    ]
)


@pytest.fixture
def node(tmp_path: Path, database_url: str, backend: FakeBackend) -> Iterator[ServeProcess]:
    node = ServeProcess(
        tmp_path / "var",
        database_url,
        {"BROKER__SERVER__WORKERS": "2", "BROKER__METERING__QUOTAS": QUOTAS},
    )
    try:
        wait_until(lambda: any(e.get("event") == "node_started" for e in node.events()), "start")
        model = echo_model(backend.target)
        model.pricing.currency = "USD"
        model.pricing.per_call_micros = 2000
        with node.client("acme-models", "vendor") as vendor:
            vendor.register_model(model)
        yield node
    finally:
        if node.process.poll() is None:
            node.process.kill()
            node.process.wait(timeout=30)
        node.close_log()


def _call(node: ServeProcess, tenant: str = "bank") -> grpc.RpcError | None:
    """One call on a connection of its own (so the kernel picks either worker)."""
    token = node.issuer.mint(subject=f"{tenant}-svc", tenant=tenant, roles=["buyer"])
    with BrokerClient(
        "unused", token=token, channel=own_connection(node), max_attempts=1
    ) as client:
        try:
            client.invoke(MODEL, {"text": "x"}, timeout=30)
        except grpc.RpcError as exc:
            return exc
    return None


def test_the_rate_limit_holds_across_two_worker_processes(
    node: ServeProcess, database_url: str
) -> None:
    results: list[grpc.RpcError | None] = []
    lock = threading.Lock()

    def caller() -> None:
        for _ in range(4):
            outcome = _call(node)
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Keep calling (all refused now) until both processes have served calls of this test.
    for _ in range(40):
        if workers_that_served(node, "Invoke") == {0, 1}:
            break
        results.append(_call(node))
    assert workers_that_served(node, "Invoke") == {0, 1}

    answered = [r for r in results if r is None]
    refused = [r for r in results if r is not None]
    assert len(answered) == BURST
    assert {r.code() for r in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    for error in refused:
        assert (error.details() or "").startswith(
            "tenant bank: 0.001 calls/s limit on model acme-models/echo; retry in "
        )
    status = rpc_status.from_call(refused[0])
    assert status is not None
    failure, retry = error_details_pb2.QuotaFailure(), error_details_pb2.RetryInfo()
    assert any(d.Unpack(failure) for d in status.details)
    assert any(d.Unpack(retry) for d in status.details)
    assert [v.subject for v in failure.violations] == ["tenant:bank/model:acme-models/echo"]
    assert retry.retry_delay.seconds > 0

    # Audited as refused, billed nothing; the answered ones billed once each.
    engine = create_engine_for(database_url)
    try:
        with engine.connect() as conn:
            statuses = conn.execute(
                sa.text(
                    "SELECT status, count(*) FROM audit_entries "
                    "WHERE kind = 'call.outcome' AND tenant = 'bank' GROUP BY status"
                )
            ).all()
            billed = conn.execute(
                sa.text(
                    "SELECT status, sum(calls), sum(cost_micros), count(*) FROM usage_records "
                    "WHERE tenant = 'bank' GROUP BY status"
                )
            ).all()
    finally:
        engine.dispose()
    assert dict(statuses) == {"OK": BURST, "RESOURCE_EXHAUSTED": len(refused)}
    assert sorted(tuple(row) for row in billed) == [
        ("OK", BURST, BURST * 2000, BURST),
        ("RESOURCE_EXHAUSTED", 0, 0, len(refused)),
    ]


def test_a_monthly_spend_budget_refuses_once_reached(node: ServeProcess) -> None:
    # shop may spend USD 0.005 a month; each call costs USD 0.002: the third one reaches it.
    assert [_call(node, "shop") for _ in range(3)] == [None, None, None]
    refused = _call(node, "shop")
    assert refused is not None and refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (refused.details() or "").startswith(
        "tenant shop: monthly spend limit of USD 0.005 on all models reached in "
    )
    assert "(USD 0.006 spent)" in (refused.details() or "")
    assert _call(node, "bank") is None  # another tenant's budget is its own

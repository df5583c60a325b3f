"""The Prometheus page: the series an operator needs, right after the calls that made them.

One broker in this process (its counters are the process's, so the test compares before and
after), and a node of two workers whose page sums both (prometheus_client multiprocess mode).
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import FakeBackend, echo_model, start_broker
from tests.integration.test_serve_process import ServeProcess, metrics_page
from tests.integration.test_workers import buyer, workers_that_served
from tests.integration.waiting import wait_until

MODEL = "acme-models/echo@1.0.0"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(page: str) -> Samples:
    """Every sample on the page: (name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return parse(answer.read().decode())


def test_the_page_counts_calls_stages_policy_actions_and_the_audit_log(
    tmp_path: Path, backend: FakeBackend
) -> None:
    broker = start_broker(
        tmp_path / "var", f"sqlite:///{tmp_path / 'b.db'}", BROKER__METRICS__LISTEN="127.0.0.1:0"
    )
    try:
        page = broker.server.metrics_page
        assert page is not None and page.port > 0
        broker.client("acme-models", "vendor").register_model(echo_model(backend.target))
        before = scrape(page.port)
        buyer = broker.client("bank", "buyer", max_attempts=1)
        for _ in range(3):
            buyer.invoke(MODEL, {"text": "x", "contact": "ada@example.com"})
        with pytest.raises(grpc.RpcError):
            buyer.invoke("acme-models/missing@1.0.0", {"text": "x"})
        broker.server.audit.checkpoint_now()
        after = scrape(page.port)

        def grew(name: str, **labels: str) -> float:
            return total(after, name, **labels) - total(before, name, **labels)

        invoke = "/broker.v1.Broker/Invoke"
        assert grew("broker_rpcs_total", method=invoke, tenant="bank", outcome="ok") == 3
        assert grew("broker_rpcs_total", method=invoke, outcome="refused", code="NOT_FOUND") == 1
        assert grew("broker_rpc_duration_seconds_count", method=invoke) == 4
        for stage in ("auth", "resolve", "classify", "decide", "enforce", "audit_intent"):
            assert grew("broker_stage_duration_seconds_count", stage=stage) >= 3, stage
        for stage in ("dispatch", "restore", "audit_outcome"):
            assert grew("broker_stage_duration_seconds_count", stage=stage) == 3, stage
        assert grew("broker_policy_actions_total", direction="request", label="pii.email") == 3
        lookups = grew("broker_plan_cache_lookups_total")
        assert lookups >= 6 and grew("broker_plan_cache_lookups_total", result="hit") >= 4
        assert grew("broker_audit_entries_total") >= 7  # 3 x (intent, outcome) + the refusal
        assert grew("broker_audit_commit_duration_seconds_count") >= 1
        assert total(after, "broker_audit_tree_size") >= 8  # registration entries, the calls
        assert total(after, "broker_audit_last_checkpoint_timestamp_seconds") > 1.7e9
        assert ("broker_retention_overdue_records", ()) in after  # declared, even if unset
    finally:
        broker.stop()


def test_a_node_of_two_workers_serves_one_page_that_sums_them(
    tmp_path: Path, backend: FakeBackend
) -> None:
    node = ServeProcess(
        tmp_path / "var",
        f"sqlite:///{tmp_path / 'b.db'}",
        {"BROKER__SERVER__WORKERS": "2", "BROKER__METRICS__LISTEN": "127.0.0.1:0"},
    )
    try:
        wait_until(lambda: any(e.get("event") == "node_started" for e in node.events()), "start")
        with node.client("acme-models", "vendor") as vendor:
            vendor.register_model(echo_model(backend.target))
        calls = 0
        while workers_that_served(node, "Invoke") != {0, 1} and calls < 60:
            with buyer(node, max_attempts=1) as client:
                client.invoke(MODEL, {"text": "x"})
            calls += 1
        assert workers_that_served(node, "Invoke") == {0, 1}
        samples = parse(metrics_page(node))
        invoke = "/broker.v1.Broker/Invoke"
        assert total(samples, "broker_rpcs_total", method=invoke, outcome="ok") == calls
        assert total(samples, "broker_stage_duration_seconds_count", stage="dispatch") == calls
    finally:
        assert node.terminate() == 0
    assert list((tmp_path / "var" / "run" / "metrics").glob("*.db"))  # the workers' files

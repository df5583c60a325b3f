"""The demo a newcomer runs: the iris model behind the broker, served by a real MLServer."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import orjson
import pytest

from broker.config import load_config
from broker.demo.mlserver import MLServerProcess
from broker.demo.setup import EXAMPLES, demo_model, ensure_registered
from broker.registry.store import RegistryStore
from tests.integration.harness import BrokerHarness, start_broker


@pytest.fixture
def broker(tmp_path: Path, database_url: str) -> Iterator[BrokerHarness]:
    harness = start_broker(tmp_path / "var", database_url)
    yield harness
    harness.stop()


def test_iris_classifier_answers_through_the_broker(
    broker: BrokerHarness, mlserver: MLServerProcess
) -> None:
    store = RegistryStore(broker.server.engine)
    model = ensure_registered(store, demo_model(mlserver.grpc_target))
    assert model.ref == "demo-vendor/iris@1.0.0"
    # Registering again (the next `make run`) repoints the endpoint instead of failing.
    assert ensure_registered(store, demo_model(mlserver.grpc_target)).ref == model.ref

    buyer = broker.client("acme-bank", "buyer")
    payload = orjson.loads((EXAMPLES / "iris-call.json").read_bytes())
    assert buyer.invoke("demo-vendor/iris", payload, timeout=30).answer == {"species": 2}
    setosa = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    assert buyer.invoke("demo-vendor/iris@1.0.0", setosa, timeout=30).answer == {"species": 0}

    with pytest.raises(grpc.RpcError) as exc:
        buyer.invoke("demo-vendor/iris@1.0.0", {"sepal_length": 5.1}, timeout=30)
    assert exc.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "/sepal_width" in exc.value.details()  # type: ignore[attr-defined]


def test_the_demo_serves_metrics_that_show_its_calls(
    tmp_path: Path, mlserver: MLServerProcess
) -> None:
    demo_config = load_config(EXAMPLES / "broker.toml")
    assert demo_config.metrics.listen == "127.0.0.1:9464"  # `make run` serves the page
    # The same page on a free port (9464 may be taken on a shared machine).
    broker = start_broker(
        tmp_path / "var", f"sqlite:///{tmp_path / 'b.db'}", BROKER__METRICS__LISTEN="127.0.0.1:0"
    )
    try:
        ensure_registered(RegistryStore(broker.server.engine), demo_model(mlserver.grpc_target))
        payload = orjson.loads((EXAMPLES / "iris-call.json").read_bytes())
        broker.client("acme-bank", "buyer").invoke("demo-vendor/iris", payload, timeout=30)
        assert broker.server.metrics_page is not None
        url = f"http://127.0.0.1:{broker.server.metrics_page.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            page = answer.read().decode()
    finally:
        broker.stop()
    calls = [line for line in page.splitlines() if line.startswith("broker_rpcs_total{")]
    assert any('model="demo-vendor/iris@1.0.0"' in line and 'code="OK"' in line for line in calls)
    for series in ("broker_stage_duration_seconds_bucket", "broker_audit_entries_total"):
        assert series in page

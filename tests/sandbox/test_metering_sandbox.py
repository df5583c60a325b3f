"""A sandboxed model's CPU time is billed per second, from the worker the call ran in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from broker._proto.broker.v1 import models_pb2
from broker.packages.store import PackageStore
from tests.integration.harness import BrokerHarness, start_broker

pytestmark = pytest.mark.sandbox

POOL_PACKAGE = Path(__file__).parent / "pool_pkg"
MODEL = "acme-models/spinner@1.0.0"


@pytest.fixture
def broker(tmp_path: Path, database_url: str, launcher: object) -> Iterator[BrokerHarness]:
    harness = start_broker(tmp_path / "var", database_url)
    digest = PackageStore(harness.config.data_dir).add(POOL_PACKAGE).digest
    harness.client("acme-models", "vendor").register_model(
        models_pb2.Model(
            name="spinner",
            version="1.0.0",
            runtime=models_pb2.RUNTIME_SANDBOX,
            package_digest=digest,
            fields=[models_pb2.FieldSpec(path="/do", type="string")],
            pricing=models_pb2.Pricing(currency="EUR", per_cpu_second_micros=1_000_000),
        )
    )
    yield harness
    harness.stop()


def test_sandbox_cpu_seconds_are_billed(broker: BrokerHarness, database_url: str) -> None:
    buyer = broker.client("bank", "buyer")
    spun = buyer.invoke(MODEL, {"do": "spin", "seconds": 0.4}, timeout=60)
    idle = buyer.invoke(MODEL, {"do": "echo"}, timeout=60)
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = {
                r.call_id: r
                for r in conn.execute(
                    sa.text("SELECT call_id, cpu_us, cost_micros FROM usage_records")
                )
            }
    finally:
        engine.dispose()
    spin_row, idle_row = rows[spun.call_id], rows[idle.call_id]
    assert spin_row.cpu_us >= 390_000  # 0.4 CPU seconds at clock-tick precision
    assert spin_row.cost_micros == (spin_row.cpu_us * 1_000_000 + 500_000) // 1_000_000
    assert idle_row.cpu_us < spin_row.cpu_us

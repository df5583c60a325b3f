"""A vendor's prices, from its model description file to the buyer's catalogue and CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import json_format

from broker._proto.broker.v1 import models_pb2
from tests.integration.harness import BrokerHarness, FakeBackend, echo_model, start_broker


@pytest.fixture
def broker(tmp_path: Path, database_url: str) -> Iterator[BrokerHarness]:
    harness = start_broker(tmp_path / "var", database_url)
    yield harness
    harness.stop()


def _cli(harness: BrokerHarness, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BROKER_TARGET": harness.target, "BROKER_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-m", "broker.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_prices_set_in_the_description_reach_list_models_and_the_cli(
    broker: BrokerHarness, backend: FakeBackend, tmp_path: Path
) -> None:
    model = echo_model(backend.target, name="priced")
    described = json_format.MessageToDict(model)
    described["pricing"] = {
        "currency": "USD",
        "perCallMicros": "2000",
        "perTensorElementMicros": 5,
    }
    model_file = tmp_path / "model.json"
    model_file.write_text(json_format.MessageToJson(json_format.ParseDict(described, model)))
    vendor = broker.token("acme-models", "vendor")
    registered = _cli(broker, vendor, "models", "register", str(model_file))
    assert registered.returncode == 0, registered.stderr

    buyer = broker.client("bank", "buyer")
    (listed,) = buyer.list_models(timeout=10)
    assert listed.pricing == models_pb2.Pricing(
        currency="USD", per_call_micros=2000, per_tensor_element_micros=5
    )
    shown = _cli(broker, broker.token("bank", "buyer"), "models", "list")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.rstrip().endswith("price: USD 0.002/call, 0.000005/tensor element")


def test_a_price_without_currency_is_refused_with_what_to_fix(
    broker: BrokerHarness, backend: FakeBackend, tmp_path: Path
) -> None:
    model = echo_model(backend.target, name="unpriced")
    model.pricing.per_call_micros = 100
    model_file = tmp_path / "model.json"
    model_file.write_text(json_format.MessageToJson(model))
    refused = _cli(
        broker, broker.token("acme-models", "vendor"), "models", "register", str(model_file)
    )
    assert refused.returncode == 1
    assert "INVALID_ARGUMENT: model.pricing.currency is required when a price is set" in (
        refused.stderr
    )

"""Streamed calls are metered for what was delivered: whole, broken, or abandoned by the buyer."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from broker._proto.broker.v1 import models_pb2
from tests.integration.fake_openai import FakeOpenAI, start_fake_openai
from tests.integration.harness import BrokerHarness, start_broker
from tests.integration.test_invoke_stream import (
    cancel_a_slow_stream_after_three_chunks,
    chat,
    chat_model,
    deltas,
    outcome,
    stream,
)

PRICE = models_pb2.Pricing(
    currency="USD", per_call_micros=100, per_input_token_micros=3, per_output_token_micros=5
)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    server = start_fake_openai()
    yield server
    server.stop()


@pytest.fixture
def broker(tmp_path: Path, fake: FakeOpenAI, database_url: str) -> Iterator[BrokerHarness]:
    harness = start_broker(tmp_path / "var", database_url)
    model = chat_model(fake.base_url)
    model.pricing.CopyFrom(PRICE)
    harness.client("chat-vendor", "vendor").register_model(model)
    yield harness
    harness.stop()


def usage_row(harness: BrokerHarness, call_id: str) -> dict[str, Any]:
    """The call's usage record (written with its outcome entry, so present when it is)."""
    outcome(harness, call_id)  # waits for the outcome entry
    engine = sa.create_engine(harness.config.database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.text("SELECT * FROM usage_records WHERE call_id = :c"), {"c": call_id}
            ).one()
    finally:
        engine.dispose()
    return dict(row._mapping)


def test_a_whole_stream_is_billed_the_vendors_usage(
    broker: BrokerHarness, fake: FakeOpenAI
) -> None:
    fake.split = lambda text: re.findall(r"\S+\s*", text)
    messages, error = stream(broker, chat("one two three four"))
    assert error is None
    summary = messages[-1].summary
    row = usage_row(broker, summary.call_id)
    prompt, completion = summary.usage.prompt_tokens, summary.usage.completion_tokens
    assert (row["calls"], row["input_tokens"], row["output_tokens"]) == (1, prompt, completion)
    assert row["cost_micros"] == 100 + 3 * prompt + 5 * completion
    assert row["leaf_index"] == summary.receipt.leaf_index
    assert outcome(broker, summary.call_id)["metering"]["cost_micros"] == row["cost_micros"]


def test_a_broken_stream_is_billed_for_the_chunks_delivered(
    broker: BrokerHarness, fake: FakeOpenAI
) -> None:
    fake.script = "drop"
    fake.split = lambda text: re.findall(r"\S+\s*", text)
    messages, error = stream(broker, chat("alpha beta gamma delta"))
    assert error is not None
    delivered = len(deltas(messages))
    row = usage_row(broker, messages[0].decisions.call_id)
    assert row["status"] == "UNAVAILABLE"
    assert (row["calls"], row["input_tokens"], row["output_tokens"]) == (1, 0, delivered)
    assert row["cost_micros"] == 100 + 5 * delivered


def test_a_stream_the_buyer_left_is_billed_for_what_it_got(
    broker: BrokerHarness, fake: FakeOpenAI
) -> None:
    first = cancel_a_slow_stream_after_three_chunks(broker, fake)
    assert fake.disconnected.wait(10)
    entry = outcome(broker, first.decisions.call_id)
    row = usage_row(broker, first.decisions.call_id)
    chunks = entry["stream"]["delta_chunks"]
    assert row["status"] == "CANCELLED" and chunks >= 2
    assert (row["calls"], row["output_tokens"]) == (1, chunks)
    assert row["cost_micros"] == 100 + 5 * chunks == entry["metering"]["cost_micros"]


def test_a_stream_refused_before_the_vendor_is_free(broker: BrokerHarness) -> None:
    messages, error = stream(broker, chat("x"), model="chat-vendor/missing@1.0.0")
    assert error is not None and not messages
    engine = sa.create_engine(broker.config.database_url)
    try:
        deadline = time.monotonic() + 10
        while True:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.text("SELECT calls, cost_micros, status FROM usage_records")
                ).all()
            if rows or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        engine.dispose()
    assert [tuple(r) for r in rows] == [(0, 0, "NOT_FOUND")]


def test_a_stream_over_the_rate_limit_is_refused_and_audited(
    tmp_path: Path, fake: FakeOpenAI, database_url: str
) -> None:
    quotas = '[{"tenant": "bank", "calls_per_second": 0.001, "burst": 1}]'
    harness = start_broker(tmp_path / "q", database_url, BROKER__METERING__QUOTAS=quotas)
    try:
        harness.client("chat-vendor", "vendor").register_model(chat_model(fake.base_url))
        _, error = stream(harness, chat("one"))
        assert error is None
        sent = len(fake.requests)
        messages, refused = stream(harness, chat("two"))
        assert refused is not None and not messages
        assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (refused.details() or "").startswith("tenant bank: 0.001 calls/s limit on all")
        assert len(fake.requests) == sent  # the vendor never saw the refused call
        engine = sa.create_engine(database_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.text(
                        "SELECT status, calls, cost_micros FROM usage_records ORDER BY leaf_index"
                    )
                ).all()
        finally:
            engine.dispose()
        assert [tuple(r) for r in rows] == [("OK", 1, 0), ("RESOURCE_EXHAUSTED", 0, 0)]
    finally:
        harness.stop()

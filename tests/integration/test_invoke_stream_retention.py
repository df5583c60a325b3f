"""InvokeStream under a policy that keeps calls: retained as Invoke does, partial streams too.

The shipped policy keeps tenant ``acme``'s requests (7 days) and answers (30 days). A streamed
answer is kept as the buyer got it: the JSON array of the chunk objects delivered. Every test
runs on SQLite and PostgreSQL (``database_url``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import orjson
import pytest
import sqlalchemy as sa

from broker._proto.broker.v1 import broker_pb2, broker_pb2_grpc, retention_pb2, retention_pb2_grpc
from broker.enforce.restore import CIPHERTEXT_RE
from broker.retention.rootkey import generate_root_key_file
from tests.integration.fake_openai import FakeOpenAI, start_fake_openai
from tests.integration.harness import BrokerHarness, start_broker
from tests.integration.test_invoke_stream import (
    MODEL,
    chat,
    chat_model,
    confidential,
    deltas,
    outcome,
    stream,
    text_of,
)

KEEPS = "acme"  # the shipped policy retains this tenant's calls


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    server = start_fake_openai()
    yield server
    server.stop()


def _start(tmp_path: Path, database_url: str, fake: FakeOpenAI, **env: str) -> BrokerHarness:
    harness = start_broker(tmp_path / "var", database_url, **env)
    harness.client("chat-vendor", "vendor").register_model(chat_model(fake.base_url))
    return harness


@pytest.fixture
def broker(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    database_url: str,
    fake: FakeOpenAI,
) -> Iterator[BrokerHarness]:
    root_key = tmp_path_factory.mktemp("secrets") / "root.key"
    generate_root_key_file(root_key)
    harness = _start(tmp_path, database_url, fake, BROKER__RETENTION__ROOT_KEY_FILE=str(root_key))
    yield harness
    harness.stop()


def retained(harness: BrokerHarness, call_id: str) -> dict[str, bytes]:
    """The call's retained payloads by kind: listed by compliance, read by the buyer."""
    with harness.channel() as channel:
        stub = retention_pb2_grpc.RetentionStub(channel)
        compliance = (("authorization", f"Bearer {harness.token(KEEPS, 'compliance')}"),)
        buyer = (("authorization", f"Bearer {harness.token(KEEPS, 'buyer')}"),)
        listed = stub.ListRecords(
            retention_pb2.ListRecordsRequest(call_id=call_id), metadata=compliance, timeout=10
        )
        out: dict[str, bytes] = {}
        for record in listed.records:
            assert record.call_id == call_id
            got = stub.GetRecord(
                retention_pb2.GetRecordRequest(record_id=record.record_id),
                metadata=buyer,
                timeout=10,
            )
            kind = retention_pb2.PayloadKind.Name(record.kind).removeprefix("PAYLOAD_KIND_")
            out[kind.lower()] = got.payload
        return out


def listed_ids(harness: BrokerHarness, call_id: str) -> list[str]:
    """The ids of the call's records, as compliance lists them."""
    with harness.channel() as channel:
        listed = retention_pb2_grpc.RetentionStub(channel).ListRecords(
            retention_pb2.ListRecordsRequest(call_id=call_id),
            metadata=(("authorization", f"Bearer {harness.token(KEEPS, 'compliance')}"),),
            timeout=10,
        )
    return [record.record_id for record in listed.records]


def delivered_bytes(messages: list[broker_pb2.InvokeStreamChunk]) -> bytes:
    """The delta messages the buyer received, as one JSON array of the same bytes."""
    return b"[" + b",".join(m.delta for m in messages if m.WhichOneof("part") == "delta") + b"]"


def test_streamed_call_is_retained_as_the_buyer_got_it(
    broker: BrokerHarness, fake: FakeOpenAI
) -> None:
    payload = chat("alpha beta gamma delta")
    fake.split = lambda text: [text[:3], text[3:9], text[9:]]
    messages, error = stream(broker, payload, tenant=KEEPS)
    assert error is None
    summary = messages[-1].summary
    kept = retained(broker, summary.call_id)
    assert set(kept) == {"request", "response"}
    assert sorted(summary.retained_record_ids) == sorted(listed_ids(broker, summary.call_id))
    assert orjson.loads(kept["request"]) == payload  # as the buyer sent it, like Invoke
    assert kept["response"] == delivered_bytes(messages)  # exactly the chunks delivered
    assert (
        "".join(
            c["delta"].get("content", "")
            for chunk in orjson.loads(kept["response"])
            for c in chunk["choices"]
        )
        == "alpha beta gamma delta"
    )
    entry = outcome(broker, summary.call_id)
    assert entry["status"] == "OK" and entry["stream"]["partial"] is False
    assert sorted(entry["retained_record_ids"]) == sorted(summary.retained_record_ids)


def test_encrypted_value_is_opened_for_the_buyer_and_kept_as_delivered(
    broker: BrokerHarness, fake: FakeOpenAI
) -> None:
    payload, labels = confidential("Grace Hopper", "Repeat what follows.")
    fake.split = list
    messages, error = stream(broker, payload, labels=labels, tenant=KEEPS)
    assert error is None and text_of(messages) == "Grace Hopper"
    assert CIPHERTEXT_RE.fullmatch(fake.last_user_text())
    kept = retained(broker, messages[-1].summary.call_id)
    assert kept["response"] == delivered_bytes(messages)
    assert orjson.loads(kept["request"]) == payload


def test_a_broken_stream_keeps_what_was_delivered_and_says_partial(
    broker: BrokerHarness, fake: FakeOpenAI
) -> None:
    fake.script = "drop"
    fake.split = lambda text: text.split(" ")
    messages, error = stream(broker, chat("alpha beta gamma"), tenant=KEEPS)
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    assert text_of(messages) == "alphabeta"
    call_id = messages[0].decisions.call_id
    entry = outcome(broker, call_id)
    assert entry["status"] == "UNAVAILABLE" and entry["stream"]["partial"] is True
    assert sorted(entry["retained_record_ids"]) == sorted(listed_ids(broker, call_id))
    kept = retained(broker, call_id)
    assert kept["response"] == delivered_bytes(messages)
    assert orjson.loads(kept["request"]) == chat("alpha beta gamma")


def test_a_cancelled_stream_keeps_what_was_delivered(
    broker: BrokerHarness, fake: FakeOpenAI
) -> None:
    fake.script = "slow"
    request = broker_pb2.InvokeRequest(model=MODEL, json=orjson.dumps(chat("go")))
    stub = broker_pb2_grpc.BrokerStub(broker.channel())
    metadata = (("authorization", f"Bearer {broker.token(KEEPS, 'buyer')}"),)
    call = stub.InvokeStream(request, timeout=30, metadata=metadata)
    received = [next(call), next(call), next(call)]
    call.cancel()
    assert fake.disconnected.wait(10)
    call_id = received[0].decisions.call_id
    entry = outcome(broker, call_id)
    assert entry["status"] == "CANCELLED" and entry["stream"]["partial"] is True
    kept = orjson.loads(retained(broker, call_id)["response"])
    got = deltas(received)
    # The broker may have handed gRPC a chunk or two the buyer never read: it keeps those too.
    assert kept[: len(got)] == got and len(kept) == entry["stream"]["delta_chunks"]


def test_no_root_key_refuses_before_anything_is_sent(
    tmp_path: Path, database_url: str, fake: FakeOpenAI
) -> None:
    harness = _start(tmp_path, database_url, fake)
    try:
        messages, error = stream(harness, chat("keep me"), tenant=KEEPS)
        assert error is not None and error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "retained" in (error.details() or "")
        assert messages == [] and fake.requests == []
        # A tenant whose policy keeps nothing streams as usual on the same broker.
        messages, error = stream(harness, chat("fine"), tenant="bank")
        assert error is None and text_of(messages) == "fine"
        assert list(messages[-1].summary.retained_record_ids) == []
    finally:
        harness.stop()


def test_encrypted_canary_is_nowhere_but_in_the_buyers_answer(
    broker: BrokerHarness,
    fake: FakeOpenAI,
    database_url: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    canary = f"Canary{uuid.uuid4().hex[:12]}"
    payload, labels = confidential(canary, "Repeat what follows.")
    fake.split = lambda text: [text[i : i + 5] for i in range(0, len(text), 5)]
    messages, error = stream(broker, payload, labels=labels, tenant=KEEPS)
    assert error is None and text_of(messages) == canary
    call_id = messages[-1].summary.call_id
    assert set(retained(broker, call_id)) == {"request", "response"}
    assert canary.encode() not in orjson.dumps(fake.requests)
    outcome(broker, call_id)  # written before the summary; read once so the log is settled
    broker.stop()
    out, err = capfd.readouterr()
    assert canary not in out and canary not in err
    assert _tables_holding(database_url, canary) == []
    files = list(Path(broker.config.data_dir).rglob("*"))
    if database_url.startswith("sqlite:///"):
        database = Path(database_url.removeprefix("sqlite:///"))
        files += [database, database.with_name(database.name + "-wal")]
    for path in files:
        if path.is_file():
            assert canary.encode() not in path.read_bytes(), path


def _tables_holding(url: str, needle: str) -> list[str]:
    engine = sa.create_engine(url)
    found = []
    try:
        meta = sa.MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            for table in meta.sorted_tables:
                for row in conn.execute(sa.select(table)):
                    if needle in repr(tuple(row)):
                        found.append(table.name)
    finally:
        engine.dispose()
    return found


def test_records_that_cannot_be_written_end_the_stream_with_unavailable(
    broker: BrokerHarness, fake: FakeOpenAI, database_url: str
) -> None:
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE retention_records RENAME TO retention_gone"))
        messages, error = stream(broker, chat("alpha beta"), tenant=KEEPS)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE retention_gone RENAME TO retention_records"))
        engine.dispose()
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    assert "retained records cannot be written" in (error.details() or "")
    assert text_of(messages) == "alpha beta"  # delivered before the end; no summary
    assert messages[-1].WhichOneof("part") == "delta"
    entry = outcome(broker, messages[0].decisions.call_id)
    assert entry["status"] == "UNAVAILABLE" and entry["stream"]["partial"] is False

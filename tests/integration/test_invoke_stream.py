"""Broker/InvokeStream end to end against a scripted OpenAI-compatible vendor.

The fake vendor (``fake_openai``) echoes what it received, split into chunks exactly where a
test says, so restoration across chunk boundaries is proven deterministically at every split
point; it also produces the faults a real model won't (drops, malformed events, a 50 MB answer,
silence, a slow stream the buyer abandons). The audit outcome of each call is read back.
"""

from __future__ import annotations

import base64
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
import sqlalchemy as sa

from broker._proto.broker.v1 import broker_pb2, broker_pb2_grpc, models_pb2
from broker.enforce.restore import CIPHERTEXT_RE
from broker.enforce.vault import TOKEN_RE, new_token
from tests.integration.fake_openai import FakeOpenAI, start_fake_openai
from tests.integration.harness import BrokerHarness, start_broker

MODEL = "chat-vendor/fake-chat@1.0.0"
NAME, EMAIL, CARD = "Ada Lovelace", "ada@example.com", "4111 1111 1111 1111"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    server = start_fake_openai()
    yield server
    server.stop()


@pytest.fixture
def broker(tmp_path: Path, fake: FakeOpenAI) -> Iterator[BrokerHarness]:
    harness = start_broker(
        tmp_path / "var",
        f"sqlite:///{tmp_path / 'broker.db'}",
        BROKER__BACKENDS__MAX_ANSWER_BYTES=str(1024 * 1024),
    )
    harness.client("chat-vendor", "vendor").register_model(chat_model(fake.base_url))
    yield harness
    harness.stop()


def chat_model(base_url: str, *, api_key: str = "") -> models_pb2.Model:
    """A chat model whose message contents and tool arguments are labelled as the vendor's."""
    return models_pb2.Model(
        name="fake-chat",
        version="1.0.0",
        description="scripted chat model",
        runtime=models_pb2.RUNTIME_OPENAI_HTTP,
        endpoint=models_pb2.Endpoint(target=base_url, remote_model="fake", api_key=api_key),
        fields=[models_pb2.FieldSpec(path="/messages/*/content", type="string")],
    )


def chat(*user: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text} for text in user]}


def name_email_card() -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Name in its own message (labelled pii.name), e-mail and card detected in free text."""
    payload = chat(NAME, f"Repeat exactly: my e-mail is {EMAIL} and my card is {CARD}.")
    return payload, {"/messages/0/content": ["pii.name"]}


def stream(
    harness: BrokerHarness,
    payload: dict[str, Any],
    *,
    labels: dict[str, list[str]] | None = None,
    tenant: str = "bank",
    timeout: float = 10.0,
    model: str = MODEL,
) -> tuple[list[broker_pb2.InvokeStreamChunk], grpc.RpcError | None]:
    request = broker_pb2.InvokeRequest(model=model, json=orjson.dumps(payload))
    for path, names in (labels or {}).items():
        request.labels[path].labels.extend(names)
    stub = broker_pb2_grpc.BrokerStub(harness.channel())
    metadata = (("authorization", f"Bearer {harness.token(tenant, 'buyer')}"),)
    messages: list[broker_pb2.InvokeStreamChunk] = []
    try:
        for message in stub.InvokeStream(request, timeout=timeout, metadata=metadata):
            messages.append(message)
    except grpc.RpcError as exc:
        return messages, exc
    return messages, None


def deltas(messages: list[broker_pb2.InvokeStreamChunk]) -> list[dict[str, Any]]:
    return [orjson.loads(m.delta) for m in messages if m.WhichOneof("part") == "delta"]


def text_of(messages: list[broker_pb2.InvokeStreamChunk]) -> str:
    return "".join(
        choice["delta"].get("content", "") for d in deltas(messages) for choice in d["choices"]
    )


def outcome(harness: BrokerHarness, call_id: str) -> dict[str, Any]:
    """The call's audit outcome entry, once the log has stored it."""
    engine = sa.create_engine(harness.config.database_url)
    query = sa.text("SELECT entry FROM audit_entries WHERE call_id = :c AND kind = 'call.outcome'")
    try:
        for _ in range(100):
            with engine.connect() as conn:
                row = conn.execute(query, {"c": call_id}).first()
            if row is not None:
                entry: dict[str, Any] = orjson.loads(bytes(row[0]))
                return entry
            time.sleep(0.05)
    finally:
        engine.dispose()
    raise AssertionError("no outcome entry")


def cancel_a_slow_stream_after_three_chunks(
    broker: BrokerHarness, fake: FakeOpenAI
) -> broker_pb2.InvokeStreamChunk:
    """Start a stream on the slow vendor, read three chunks, cancel; the first chunk."""
    fake.script = "slow"
    request = broker_pb2.InvokeRequest(model=MODEL, json=orjson.dumps(chat("go")))
    stub = broker_pb2_grpc.BrokerStub(broker.channel())
    metadata = (("authorization", f"Bearer {broker.token('bank', 'buyer')}"),)
    call = stub.InvokeStream(request, timeout=30, metadata=metadata)
    first = next(call)
    next(call), next(call)
    call.cancel()
    return first


def every_token_split(text: str) -> Iterator[list[str]]:
    """For each token in ``text`` and each position inside it, the text cut there."""
    for match in TOKEN_RE.finditer(text):
        for cut in range(match.start() + 1, match.end()):
            yield [text[:cut], text[cut:]]


def test_stream_tokenizes_on_the_way_in_and_restores_at_every_split(
    broker: BrokerHarness, fake: FakeOpenAI
) -> None:
    payload, labels = name_email_card()
    messages, error = stream(broker, payload, labels=labels)
    assert error is None
    sent = fake.requests[-1][1]["messages"]
    assert TOKEN_RE.fullmatch(sent[0]["content"])  # the name, whole field tokenized
    echoed = sent[1]["content"]
    assert EMAIL not in echoed and "**** **** **** 1111" in echoed and CARD not in echoed
    assert len(TOKEN_RE.findall(echoed)) == 1
    expected = f"Repeat exactly: my e-mail is {EMAIL} and my card is **** **** **** 1111."
    assert text_of(messages) == expected
    first, last = messages[0], messages[-1]
    assert first.WhichOneof("part") == "decisions" and last.WhichOneof("part") == "summary"
    assert last.summary.restored_values == 1 and last.summary.usage.total_tokens == 18
    assert last.summary.finish_reason == "stop"

    # Split the token in the vendor's answer at every position: always restored.
    splits = list(every_token_split(echoed))
    assert len(splits) == 23
    for cut in range(1, 24):

        def split(text: str, cut: int = cut) -> list[str]:
            match = TOKEN_RE.search(text)
            assert match is not None
            return [text[: match.start() + cut], text[match.start() + cut :]]

        fake.split = split
        messages, error = stream(broker, payload, labels=labels)
        assert error is None
        assert text_of(messages) == expected, cut

    # One character per chunk: every token split at every position at once.
    fake.split = list
    messages, error = stream(broker, payload, labels=labels)
    assert error is None and text_of(messages) == expected
    assert all(TOKEN_RE.search(orjson.dumps(d).decode()) is None for d in deltas(messages))


def test_a_vault_that_cannot_be_written_refuses_the_stream_and_sends_nothing(
    broker: BrokerHarness, fake: FakeOpenAI
) -> None:
    """The stream's tokens commit with its audit intent: no durable token, no vendor call."""
    engine = sa.create_engine(broker.config.database_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE vault_tokens RENAME TO vault_tokens_gone"))
    finally:
        engine.dispose()
    payload, labels = name_email_card()
    messages, error = stream(broker, payload, labels=labels)
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    assert messages == [] and fake.requests == []


def test_outcome_records_usage_digest_and_chunks(broker: BrokerHarness, fake: FakeOpenAI) -> None:
    fake.split = lambda text: re.findall(r"\S+\s*", text)
    messages, error = stream(broker, chat("one two three four"))
    assert error is None
    summary = messages[-1].summary
    entry = outcome(broker, summary.call_id)
    assert entry["status"] == "OK" and entry["usage"]["total_tokens"] == 18
    assert entry["stream"] == {"delta_chunks": summary.delta_chunks, "partial": False}
    assert entry["response_digest"] and entry["intent_index"] is not None
    assert summary.receipt.leaf_index >= 0


def test_vendor_drops_midway_gives_chunks_then_unavailable(
    broker: BrokerHarness, fake: FakeOpenAI
) -> None:
    fake.script = "drop"
    fake.split = lambda text: re.findall(r"\S+\s*", text)
    messages, error = stream(broker, chat("alpha beta gamma delta"))
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    assert text_of(messages) == "alpha beta "
    call_id = messages[0].decisions.call_id
    entry = outcome(broker, call_id)
    assert entry["status"] == "UNAVAILABLE" and entry["stream"]["partial"] is True
    assert entry["stream"]["delta_chunks"] == len(deltas(messages)) > 0


def test_malformed_event_gives_chunks_then_unknown(broker: BrokerHarness, fake: FakeOpenAI) -> None:
    fake.script = "malformed"
    fake.split = lambda text: re.findall(r"\S+\s*", text)
    messages, error = stream(broker, chat("alpha beta gamma"))
    assert error is not None and error.code() == grpc.StatusCode.UNKNOWN
    assert text_of(messages) == "alpha "
    assert "not json" not in (error.details() or "")
    assert outcome(broker, messages[0].decisions.call_id)["stream"]["partial"] is True


def test_a_50_mb_answer_is_refused(broker: BrokerHarness, fake: FakeOpenAI) -> None:
    fake.script = "huge"
    messages, error = stream(broker, chat("go"), timeout=30)
    assert error is not None and error.code() == grpc.StatusCode.UNKNOWN
    assert "1048576 bytes" in (error.details() or "")
    assert fake.sent_bytes < 8 * 1024 * 1024  # the broker hung up long before 50 MB
    assert outcome(broker, messages[0].decisions.call_id)["stream"]["partial"] is True


def test_vendor_that_never_answers_hits_the_deadline(
    broker: BrokerHarness, fake: FakeOpenAI
) -> None:
    fake.script = "hang"
    started = time.monotonic()
    messages, error = stream(broker, chat("hello"), timeout=1.5)
    assert error is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 5
    entry = outcome(broker, messages[0].decisions.call_id)
    assert entry["status"] in {"DEADLINE_EXCEEDED", "CANCELLED"}


def test_buyer_cancelling_cancels_the_vendor_and_is_audited(
    broker: BrokerHarness, fake: FakeOpenAI
) -> None:
    first = cancel_a_slow_stream_after_three_chunks(broker, fake)
    assert fake.disconnected.wait(10), "the vendor request was not cancelled"
    entry = outcome(broker, first.decisions.call_id)
    assert entry["status"] == "CANCELLED" and entry["stream"]["partial"] is True


def test_forged_and_foreign_tokens_stay_text(broker: BrokerHarness, fake: FakeOpenAI) -> None:
    # A token issued for another call of the same tenant, and one for another tenant.
    payload, labels = name_email_card()
    first, _ = stream(broker, payload, labels=labels, tenant="bank")
    own_earlier = TOKEN_RE.findall(fake.requests[-1][1]["messages"][1]["content"])[0]
    stream(broker, payload, labels=labels, tenant="other-bank")
    foreign = TOKEN_RE.findall(fake.requests[-1][1]["messages"][1]["content"])[0]
    forged = new_token()
    fake.script = "say"
    fake.text = f"a {forged} b {own_earlier} c {foreign} d"
    fake.split = list
    messages, error = stream(broker, chat("hi"), tenant="bank")
    assert error is None
    assert text_of(messages) == fake.text
    assert messages[-1].summary.restored_values == 0
    assert first[-1].summary.restored_values == 1


def test_answer_side_entities_get_their_actions_across_chunks(
    broker: BrokerHarness, fake: FakeOpenAI
) -> None:
    # The model volunteers a card number the buyer never sent: masked even when split.
    fake.script = "say"
    fake.text = "Use card 4111 1111 1111 1111 please."
    fake.split = list
    messages, error = stream(broker, chat("hi"))
    assert error is None
    assert text_of(messages) == "Use card **** **** **** 1111 please."
    assert messages[-1].summary.entity_actions["pci.card"] == "mask"


def test_only_known_chunk_fields_reach_the_buyer(broker: BrokerHarness, fake: FakeOpenAI) -> None:
    messages, error = stream(broker, chat("hello"))
    assert error is None
    for delta in deltas(messages):
        assert set(delta) <= {"id", "object", "created", "model", "choices", "usage"}


def test_a_non_streaming_runtime_is_refused(broker: BrokerHarness) -> None:
    request = broker_pb2.InvokeRequest(model="nobody/none@1.0.0", json=b"{}")
    stub = broker_pb2_grpc.BrokerStub(broker.channel())
    metadata = (("authorization", f"Bearer {broker.token('bank', 'buyer')}"),)
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.InvokeStream(request, timeout=5, metadata=metadata))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def confidential(value: str, *before: str) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """``value`` as the last user message, labelled ``confidential``: encrypted for the model."""
    payload = chat(*before, value)
    return payload, {f"/messages/{len(before)}/content": ["confidential"]}


def test_encrypted_value_echoed_is_opened_at_every_two_and_three_chunk_split(
    broker: BrokerHarness, fake: FakeOpenAI
) -> None:
    value = f"Cy{uuid.uuid4().hex[:6]}"
    payload, labels = confidential(value)
    messages, error = stream(broker, payload, labels=labels)
    assert error is None
    ciphertext = fake.last_user_text()
    assert CIPHERTEXT_RE.fullmatch(ciphertext) and value.encode() not in orjson.dumps(fake.requests)
    assert text_of(messages) == value and messages[-1].summary.restored_values == 1

    # The model repeats the ciphertext, each copy cut in two at another offset: all opened.
    cuts = range(1, len(ciphertext))

    def in_two(text: str) -> list[str]:
        return [piece for i in cuts for piece in (text[:i], text[i:] + " ")]

    fake.split = in_two
    messages, error = stream(broker, payload, labels=labels)
    assert error is None
    assert text_of(messages) == f"{value} " * len(cuts)
    assert messages[-1].summary.restored_values == len(cuts)

    # Cut in three at every pair of offsets (a few calls, to stay under the answer size limit).
    for first_cuts in (cuts[i : i + 12] for i in range(0, len(cuts), 12)):
        pairs = [(i, j) for i in first_cuts for j in range(i + 1, len(ciphertext))]

        def in_three(text: str, pairs: list[tuple[int, int]] = pairs) -> list[str]:
            return [p for i, j in pairs for p in (text[:i], text[i:j], text[j:] + " ")]

        fake.split = in_three
        messages, error = stream(broker, payload, labels=labels)
        assert error is None
        assert text_of(messages) == f"{value} " * len(pairs), first_cuts
        assert CIPHERTEXT_RE.search(orjson.dumps(deltas(messages)).decode()) is None


def test_ciphertexts_of_other_calls_and_tenants_and_forged_ones_stay_text(
    broker: BrokerHarness, fake: FakeOpenAI
) -> None:
    payload, labels = confidential("earlier value")
    stream(broker, payload, labels=labels, tenant="bank")
    own_earlier = fake.last_user_text()
    stream(broker, payload, labels=labels, tenant="other-bank")
    foreign = fake.last_user_text()
    key_id = own_earlier.split(":")[2]
    forged = f"enc:v1:{key_id}:{base64.urlsafe_b64encode(os.urandom(40)).decode().rstrip('=')}"
    assert len({own_earlier, foreign, forged}) == 3

    # This call issues its own ciphertext (so the stage runs), and the buyer itself passes the
    # earlier one along in its request: only this call's is opened.
    payload, labels = confidential("this call's value", f"earlier note: {own_earlier}")
    others = f"a {own_earlier} b {foreign} c {forged} d "
    fake.split = lambda text: [*others, *text]  # one character per chunk
    messages, error = stream(broker, payload, labels=labels, tenant="bank")
    assert error is None
    assert own_earlier in fake.requests[-1][1]["messages"][0]["content"]
    assert text_of(messages) == f"{others}this call's value"
    assert messages[-1].summary.restored_values == 1

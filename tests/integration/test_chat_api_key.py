"""Vendor API keys: set at registration, used on every call, never shown back or stored in clear.

Also unary Invoke of a chat model with tool-call arguments, whose fields get their labels.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import orjson
import pytest
import sqlalchemy as sa
from google.protobuf import field_mask_pb2

from broker._proto.broker.v1 import models_pb2, registry_pb2
from broker.enforce.vault import TOKEN_RE
from tests.integration.fake_openai import FakeOpenAI, start_fake_openai
from tests.integration.harness import BrokerHarness, start_broker
from tests.integration.test_invoke_stream import MODEL, chat_model


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    server = start_fake_openai()
    yield server
    server.stop()


@pytest.fixture
def broker(tmp_path: Path, database_url: str) -> Iterator[BrokerHarness]:
    harness = start_broker(tmp_path / "var", database_url)
    yield harness
    harness.stop()


def _rows_holding(url: str, needle: str) -> list[str]:
    engine = sa.create_engine(url)
    found = []
    try:
        meta = sa.MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            for table in meta.sorted_tables:
                for row in conn.execute(sa.select(table)):
                    if needle in repr(tuple(row)) or needle.encode() in b"".join(
                        bytes(v) for v in row if isinstance(v, bytes | memoryview)
                    ):
                        found.append(table.name)
    finally:
        engine.dispose()
    return found


def test_api_key_is_used_never_shown_and_sealed_at_rest(
    broker: BrokerHarness, fake: FakeOpenAI, database_url: str
) -> None:
    key = f"sk-{uuid.uuid4().hex}"
    vendor = broker.client("chat-vendor", "vendor")
    registered = vendor.register_model(chat_model(fake.base_url, api_key=key))
    assert registered.endpoint.api_key == "" and registered.endpoint.api_key_set
    got = vendor.registry.GetModel(
        registry_pb2.GetModelRequest(ref=MODEL), metadata=vendor._metadata(), timeout=5
    ).model
    assert got.endpoint.api_key == "" and got.endpoint.api_key_set
    assert key not in str(got) and key not in str(vendor.vendor_models())

    buyer = broker.client("bank", "buyer")
    answer = buyer.invoke(MODEL, {"messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    assert answer.answer["choices"][0]["message"]["content"] == "hi"
    assert fake.requests[-1][0]["authorization"] == f"Bearer {key}"

    rotated = f"sk-{uuid.uuid4().hex}"
    update = models_pb2.Model(
        name="fake-chat", version="1.0.0", endpoint=models_pb2.Endpoint(api_key=rotated)
    )
    mask = field_mask_pb2.FieldMask(paths=["endpoint.api_key"])
    updated = vendor.registry.UpdateModel(
        registry_pb2.UpdateModelRequest(model=update, update_mask=mask),
        metadata=vendor._metadata(),
        timeout=5,
    ).model
    assert updated.endpoint.api_key_set and updated.endpoint.target == fake.base_url
    buyer.invoke(MODEL, {"messages": [{"role": "user", "content": "again"}]}, timeout=10)
    assert fake.requests[-1][0]["authorization"] == f"Bearer {rotated}"

    for secret in (key, rotated):
        assert _rows_holding(database_url, secret) == []
        for path in Path(broker.config.data_dir).rglob("*"):
            if path.is_file() and not path.name.startswith("broker.db"):
                assert secret.encode() not in path.read_bytes(), path


def test_a_key_that_cannot_be_a_header_is_refused_without_echo(
    broker: BrokerHarness, fake: FakeOpenAI
) -> None:
    vendor = broker.client("chat-vendor", "vendor")
    bad = "sk-secret\r\nX-Evil: 1"
    with pytest.raises(grpc.RpcError) as caught:
        vendor.register_model(chat_model(fake.base_url, api_key=bad))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sk-secret" not in (caught.value.details() or "")


def test_unary_chat_tool_arguments_get_field_labels(
    broker: BrokerHarness, fake: FakeOpenAI
) -> None:
    model = chat_model(fake.base_url)
    model.fields.append(
        models_pb2.FieldSpec(
            path="/messages/*/tool_calls/*/function/arguments/holder", labels=["pii.name"]
        )
    )
    broker.client("chat-vendor", "vendor").register_model(model)
    arguments = {"holder": "Ada Lovelace", "card": "4111 1111 1111 1111", "amount": 3}
    call = {"id": "c", "type": "function", "function": {"name": "pay"}}
    call["function"]["arguments"] = orjson.dumps(arguments).decode()  # type: ignore[index]
    payload = {
        "messages": [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c", "content": "done for ada@example.com"},
            {"role": "user", "content": "ok"},
        ]
    }
    reply = broker.client("bank", "buyer").invoke(MODEL, payload, timeout=10)
    sent = fake.requests[-1][1]["messages"]
    opened = orjson.loads(sent[0]["tool_calls"][0]["function"]["arguments"])
    assert TOKEN_RE.fullmatch(opened["holder"])
    assert opened["card"] == "**** **** **** 1111" and opened["amount"] == 3
    assert "ada@example.com" not in sent[1]["content"]
    paths = {d.path for d in reply.decisions}
    assert "/messages/0/tool_calls/0/function/arguments/holder" in paths

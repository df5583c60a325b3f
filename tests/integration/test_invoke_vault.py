"""Invoke's token vault: rows durable and sealed before the model sees a token, fail closed.

The call path commits a call's vault rows in the same transaction as its audit intent and
restores the answer from the tokens it sealed (``broker.enforce.vault``). These tests hold it
to what the separate vault write promised: the row is in the table, sealed, by the time the
backend receives the token; the buyer gets its value back; and if the rows cannot be written,
nothing is sent.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from broker._proto.inference.v2 import grpc_predict_v2_pb2 as oip
from broker._proto.inference.v2 import grpc_predict_v2_pb2_grpc as oip_grpc
from broker.enforce.vault import TOKEN_RE
from tests.integration.harness import (
    BackendLog,
    BrokerHarness,
    EchoInferenceServicer,
    echo_model,
    start_broker,
)

MODEL = "acme-models/echo@1.0.0"
_ROW = sa.text("SELECT token, tenant, scope, sealed FROM vault_tokens WHERE token = :t")


class VaultWitness(EchoInferenceServicer):
    """An echo backend that, on receiving a request, reads the vault rows of its tokens."""

    def __init__(self, log: BackendLog, database_url: str) -> None:
        super().__init__(log)
        self.engine = sa.create_engine(database_url)
        self.seen: list[tuple[str, str, str, bytes]] = []

    def ModelInfer(
        self, request: oip.ModelInferRequest, context: grpc.ServicerContext
    ) -> oip.ModelInferResponse:
        text = b"".join(b for t in request.inputs for b in t.contents.bytes_contents).decode()
        tokens = TOKEN_RE.findall(text)
        with self.engine.connect() as conn:
            for token in tokens:
                row = conn.execute(
                    sa.text(
                        "SELECT token, tenant, scope, sealed FROM vault_tokens WHERE token = :t"
                    ),
                    {"t": token},
                ).first()
                if row is not None:
                    self.seen.append((row[0], row[1], row[2], bytes(row[3])))
        return super().ModelInfer(request, context)


@pytest.fixture
def witness(database_url: str) -> Iterator[tuple[VaultWitness, str]]:
    servicer = VaultWitness(BackendLog(), database_url)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    oip_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)
    servicer.engine.dispose()


@pytest.fixture
def broker(
    tmp_path: Path, database_url: str, witness: tuple[VaultWitness, str]
) -> Iterator[BrokerHarness]:
    harness = start_broker(tmp_path / "var", database_url)
    harness.client("acme-models", "vendor").register_model(
        echo_model(witness[1], labels=("pii.name",))  # the shipped policy tokenizes pii.name
    )
    yield harness
    harness.stop()


def test_the_vault_row_is_committed_and_sealed_before_the_model_sees_the_token(
    broker: BrokerHarness, witness: tuple[VaultWitness, str]
) -> None:
    servicer, _ = witness
    canary = f"Canary{uuid.uuid4().hex[:10]}"
    reply = broker.client("bank", "buyer").invoke(MODEL, {"text": canary}, timeout=30)
    assert reply.answer == {"echo": canary}  # restored for the buyer
    assert reply.restored_values == 1
    sent = servicer.log.requests[0].inputs[0].contents.bytes_contents[0].decode()
    assert re.fullmatch(TOKEN_RE, sent)  # the model saw a token, not the value
    assert len(servicer.seen) == 1
    token, tenant, scope, sealed = servicer.seen[0]
    assert (token, tenant, scope) == (sent, "bank", reply.call_id)
    assert canary.encode() not in sealed


def test_a_vault_that_cannot_be_written_refuses_the_call_and_sends_nothing(
    broker: BrokerHarness, witness: tuple[VaultWitness, str], database_url: str
) -> None:
    servicer, _ = witness
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE vault_tokens RENAME TO vault_tokens_gone"))
    finally:
        engine.dispose()
    buyer = broker.client("bank", "buyer", max_attempts=1)
    with pytest.raises(grpc.RpcError) as exc:
        buyer.invoke(MODEL, {"text": "Ada Lovelace"}, timeout=30)
    assert exc.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert servicer.log.requests == []

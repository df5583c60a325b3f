"""Invoke and InvokeStream through the broker against the real llama.cpp server (SmolLM2-135M).

A name (labelled ``pii.name`` by the buyer), an e-mail address and a card number go in; the
model sees a token, a token and a masked card. A 135M model cannot guess a name or an address
it never saw, so whenever they appear in the answer the broker restored them from the tokens
the model repeated; and the full card number can never come back. At temperature 0 and this
seed SmolLM2 often repeats the tokens (split into several pieces by its tokenizer); the tests
require that at least one of a few calls does, so a model or server that never does is noticed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from broker._proto.broker.v1 import models_pb2
from tests.integration.harness import BrokerHarness, start_broker
from tests.integration.llm_fixtures import LlamaServer
from tests.integration.test_invoke_stream import CARD, EMAIL, NAME, stream, text_of

pytestmark = pytest.mark.slow
MODEL = "hf/smollm2-chat@1.0.0"


@pytest.fixture(scope="module")
def broker(
    llama_server: LlamaServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerHarness]:
    tmp = tmp_path_factory.mktemp("chat-llama")
    harness = start_broker(tmp / "var", f"sqlite:///{tmp / 'broker.db'}")
    harness.client("hf", "vendor").register_model(
        models_pb2.Model(
            name="smollm2-chat",
            version="1.0.0",
            runtime=models_pb2.RUNTIME_OPENAI_HTTP,
            endpoint=models_pb2.Endpoint(target=llama_server.base_url, remote_model="smollm2"),
            fields=[models_pb2.FieldSpec(path="/messages/*/content", type="string")],
        )
    )
    yield harness
    harness.stop()


def payload() -> tuple[dict[str, Any], dict[str, list[str]]]:
    body = {
        "messages": [
            {"role": "system", "content": "Repeat the user's last message word for word."},
            {"role": "user", "content": NAME},
            {"role": "user", "content": f"My e-mail is {EMAIL}. My card is {CARD}."},
        ],
        "temperature": 0,
        "seed": 42,
        "max_tokens": 64,
    }
    return body, {"/messages/1/content": ["pii.name"]}


ATTEMPTS = 8


def _check(text: str, restored: int) -> bool:
    """What always holds, and whether this answer proves restoration (the model repeated).

    Each call carries fresh random tokens, so the prompt (and a 135M model's fidelity in
    copying a 24-character token) differs from call to call: about half the answers repeat
    the e-mail token intact. A few attempts make a run that never restores vanishingly rare.
    """
    assert CARD not in text  # the model only ever saw **** **** **** 1111
    if EMAIL in text or NAME in text:
        assert restored >= 1
        return True
    return False


def test_unary_invoke_tokenizes_masks_and_restores(broker: BrokerHarness) -> None:
    body, labels = payload()
    buyer = broker.client("bank", "buyer")
    proved = False
    for _ in range(ATTEMPTS):
        reply = buyer.invoke(MODEL, body, labels=labels, timeout=60)
        actions = {d.path: d for d in reply.decisions if d.direction == "request"}
        assert actions["/messages/1/content"].action == "tokenize"
        entities = {e.label: e.action for e in actions["/messages/2/content"].entities}
        assert entities == {"pii.email": "tokenize", "pci.card": "mask"}
        text = reply.answer["choices"][0]["message"]["content"]
        if _check(text, reply.restored_values):
            proved = True
            break
    assert proved, "the model never repeated a token intact"


def test_stream_restores_tokens_split_by_the_model(broker: BrokerHarness) -> None:
    body, labels = payload()
    proved = False
    for _ in range(ATTEMPTS):
        messages, error = stream(broker, body, labels=labels, timeout=60, model=MODEL)
        assert error is None
        deltas = [orjson.loads(m.delta) for m in messages if m.WhichOneof("part") == "delta"]
        assert len(deltas) > 3
        summary = messages[-1].summary
        assert summary.finish_reason in {"stop", "length"}
        # llama-cpp-python's server ignores stream_options.include_usage: no usage to report.
        if _check(text_of(messages), summary.restored_values):
            proved = True
            break
    assert proved, "the model never repeated a token intact"

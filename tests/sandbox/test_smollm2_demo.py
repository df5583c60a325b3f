"""The chat demo (``broker.demo.chat``): llama.cpp started like MLServer, the chat model registered.

These run the demo's own pieces against the real server from ``.venv-llm`` (skipped, or failed
in CI, without ``make llm-env``): the server starts on a free port and answers; the model from
``examples/demo/chat-model.json`` registers (and re-registers on the next run); the buyer
conversation in ``examples/demo/chat-call.json`` goes in with its name and e-mail address
tokenized and its card masked; the card never comes back. How the demo builds the environment
when it is missing is ``tests/sandbox/test_chat_demo.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from broker.demo import setup
from broker.demo.chat import LlamaServerProcess, llm_env_ready, start_llama_server
from broker.registry.model import Runtime
from broker.registry.store import RegistryStore
from tests.conftest import skip_or_fail
from tests.integration.harness import BrokerHarness, start_broker

pytestmark = pytest.mark.slow

LLM_VENV = Path(__file__).parents[2] / ".venv-llm"
CARD = "4111 1111 1111 1111"


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServerProcess]:
    if not llm_env_ready(LLM_VENV):
        skip_or_fail(f"no llama.cpp environment at {LLM_VENV}: run make llm-env")
    server = start_llama_server(LLM_VENV, tmp_path_factory.mktemp("llama"))
    yield server
    server.stop()
    assert server.process.poll() is not None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerHarness]:
    harness = start_broker(tmp_path / "var", f"sqlite:///{tmp_path / 'broker.db'}")
    yield harness
    harness.stop()


def test_the_demo_chat_call_is_tokenized_and_masked(
    llama: LlamaServerProcess, broker: BrokerHarness
) -> None:
    store = RegistryStore(broker.server.engine)
    model = setup.ensure_registered(store, setup.chat_model(llama.base_url))
    assert model.ref == "demo-vendor/smollm2-chat@1.0.0"
    assert model.runtime is Runtime.OPENAI_HTTP
    # The next `make run` repoints the registration at its new port instead of failing.
    assert setup.ensure_registered(store, setup.chat_model(llama.base_url)).ref == model.ref

    payload = orjson.loads((setup.EXAMPLES / "chat-call.json").read_bytes())
    buyer = broker.client("acme-bank", "buyer")
    reply = buyer.invoke(
        model.ref, payload, labels={"/messages/1/content": ["pii.name"]}, timeout=120
    )
    decisions = {d.path: d for d in reply.decisions if d.direction == "request"}
    assert decisions["/messages/1/content"].action == "tokenize"
    entities = {e.label: e.action for e in decisions["/messages/2/content"].entities}
    assert entities == {"pii.email": "tokenize", "pci.card": "mask"}
    text = reply.answer["choices"][0]["message"]["content"]
    assert text
    assert CARD not in text  # the model only ever saw **** **** **** 1111

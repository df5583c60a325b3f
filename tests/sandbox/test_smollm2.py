"""A sandboxed chat model (SmolLM2-135M on llama.cpp) through the broker, restricted text and all.

``examples/models/smollm2-chat`` runs ``llama_cpp.Llama`` inside the sandbox (no network, rlimits,
seccomp, Landlock). What these tests prove:

- a field the buyer labels ``restricted`` reaches the sandboxed LLM (the policy's ``sandbox``
  action) and the model really worked on it: asked to repeat it, the model's answer holds it;
- the same payload bound for a remote OpenAI-compatible model is refused (FAILED_PRECONDITION)
  and nothing is sent to that model;
- the answer is deterministic (greedy decoding, fixed seed);
- ``InvokeStream`` delivers the model's tokens as llama.cpp decodes them, several chunks, with
  the same text as ``Invoke``; a buyer leaving mid-stream leaves the next call working.

The environment needs llama-cpp-python, which PyPI has only as a source build of 10+ minutes:
it is installed from the wheel cache that ``make llm-env`` fills (``examples/llm/build.sh``),
every other requirement from PyPI (or pip's cache). Without that wheel, or without the sandbox,
the tests skip (fail in CI). The environment is prepared once into ``.cache/sandbox-envs/`` and
reused across sessions (it is keyed by the package's digest); the broker under test finds it,
and the digest manifest it is checked against, through links in its own ``<data_dir>/envs``,
since that is where a broker looks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest

from broker._proto.broker.v1 import broker_pb2, broker_pb2_grpc, models_pb2
from broker.errors import BrokerError
from broker.packages.digest import dir_name
from broker.packages.env_digest import manifest_path
from broker.packages.environment import Environments, PrepareOptions
from broker.packages.store import PackageStore, StoredPackage
from broker.runtimes.sandbox.launcher import SandboxLauncher
from broker.runtimes.sandbox.runtime import sandboxed_prepare_hook
from tests.conftest import skip_or_fail
from tests.integration.fake_openai import FakeOpenAI, start_fake_openai
from tests.integration.harness import BrokerHarness, start_broker

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

REPO = Path(__file__).parents[2]
PACKAGE_DIR = REPO / "examples" / "models" / "smollm2-chat"
ENVS_CACHE = REPO / ".cache" / "sandbox-envs"
LLAMA_VERSION = "0.3.36"
SANDBOXED = "acme-models/smollm2-chat@1.0.0"
REMOTE = "acme-models/remote-chat@1.0.0"

CODENAME = "Bluebird"
RESTRICTED_TEXT = f"Codename {CODENAME}: the merger with Initech closes on 3 March."
CHAT: dict[str, Any] = {
    "messages": [
        {"role": "system", "content": "Repeat the user's last message word for word."},
        {"role": "user", "content": "Ada Lovelace, ada@example.com"},
        {"role": "user", "content": RESTRICTED_TEXT},
    ],
    "max_tokens": 48,
}
LABELS = {"/messages/1/content": ["pii.name"], "/messages/2/content": ["restricted"]}


def wheel_cache() -> Path:
    """Where ``examples/llm/build.sh`` keeps the llama-cpp-python wheel (same variables)."""
    if os.environ.get("LLM_WHEELS"):
        return Path(os.environ["LLM_WHEELS"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "model-broker" / "wheels"


@pytest.fixture(scope="session")
def smollm2_prepared(
    launcher: SandboxLauncher, tmp_path_factory: pytest.TempPathFactory
) -> StoredPackage:
    """The package, its environment prepared once (``launcher`` skips without a sandbox)."""
    wheels = wheel_cache()
    if not list(wheels.glob(f"llama_cpp_python-{LLAMA_VERSION}-*.whl")):
        skip_or_fail(f"no llama-cpp-python {LLAMA_VERSION} wheel in {wheels}: run make llm-env")
    package = PackageStore(tmp_path_factory.mktemp("smollm2-store")).add(PACKAGE_DIR)
    try:
        Environments(ENVS_CACHE).prepare(
            package,
            run_hook=sandboxed_prepare_hook(),
            options=PrepareOptions(find_links=(wheels,)),
            progress=print,
        )
    except BrokerError as exc:
        skip_or_fail(f"cannot prepare smollm2-chat (PyPI unreachable?): {exc}")
    return package


@pytest.fixture(scope="module")
def remote() -> Iterator[FakeOpenAI]:
    fake = start_fake_openai()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def broker(
    smollm2_prepared: StoredPackage, remote: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerHarness]:
    tmp = tmp_path_factory.mktemp("smollm2-broker")
    data_dir = tmp / "var"
    (data_dir / "envs").mkdir(parents=True)
    name = dir_name(smollm2_prepared.digest)
    (data_dir / "envs" / name).symlink_to(ENVS_CACHE / name, target_is_directory=True)
    manifest = manifest_path(ENVS_CACHE / name)  # the environment's digest manifest, beside it
    (data_dir / "envs" / manifest.name).symlink_to(manifest)
    harness = start_broker(data_dir, f"sqlite:///{tmp / 'broker.db'}")
    digest = PackageStore(harness.config.data_dir).add(PACKAGE_DIR).digest
    assert digest == smollm2_prepared.digest
    vendor = harness.client("acme-models", "vendor")
    chat_fields = [models_pb2.FieldSpec(path="/messages/*/content", type="string")]
    vendor.register_model(
        models_pb2.Model(
            name="smollm2-chat",
            version="1.0.0",
            runtime=models_pb2.RUNTIME_SANDBOX,
            package_digest=digest,
            fields=chat_fields,
        )
    )
    vendor.register_model(
        models_pb2.Model(
            name="remote-chat",
            version="1.0.0",
            runtime=models_pb2.RUNTIME_OPENAI_HTTP,
            endpoint=models_pb2.Endpoint(target=remote.base_url, remote_model="chat"),
            fields=chat_fields,
        )
    )
    yield harness
    harness.stop()


def test_restricted_text_reaches_only_the_sandboxed_llm(
    broker: BrokerHarness, remote: FakeOpenAI
) -> None:
    buyer = broker.client("bank", "buyer", max_attempts=1)
    reply = buyer.invoke(SANDBOXED, CHAT, labels=LABELS, timeout=120)

    actions = {d.path: d.action for d in reply.decisions if d.direction == "request"}
    assert actions["/messages/2/content"] == "sandbox"
    # Inside the broker's sandbox personal data may pass unchanged: nothing was tokenized.
    assert actions["/messages/1/content"] == "allow"
    assert reply.restored_values == 0
    text = reply.answer["choices"][0]["message"]["content"]
    assert reply.answer["model"] == "SmolLM2-135M-Instruct.Q4_1"
    assert reply.answer["usage"]["completion_tokens"] > 0
    # Asked to repeat it, the model repeats the restricted text: it really saw it. (Greedy and
    # seeded, SmolLM2 repeats it verbatim; other wordings of the chat make it paraphrase, which
    # still names the codename, in lower case.)
    assert CODENAME.lower() in text.lower(), text

    with pytest.raises(grpc.RpcError) as exc:
        buyer.invoke(REMOTE, CHAT, labels=LABELS, timeout=30)
    assert exc.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert remote.requests == []


def test_answers_are_deterministic(broker: BrokerHarness) -> None:
    buyer = broker.client("bank", "buyer", max_attempts=1)
    first = buyer.invoke(SANDBOXED, CHAT, labels=LABELS, timeout=120).answer
    second = buyer.invoke(SANDBOXED, CHAT, labels=LABELS, timeout=120).answer
    content = [a["choices"][0]["message"]["content"] for a in (first, second)]
    assert content[0] == content[1]


def test_a_request_the_model_does_not_support_is_an_error(broker: BrokerHarness) -> None:
    buyer = broker.client("bank", "buyer", max_attempts=1)
    with pytest.raises(grpc.RpcError) as exc:
        buyer.invoke(SANDBOXED, {**CHAT, "tools": []}, labels=LABELS, timeout=120)
    # The model's own refusal: the call fails, the worker stays up for the next one.
    assert exc.value.code() is not grpc.StatusCode.OK
    assert buyer.invoke(SANDBOXED, CHAT, labels=LABELS, timeout=120).answer["choices"]


def test_invoke_stream_delivers_the_sandboxed_llms_tokens_as_they_come(
    broker: BrokerHarness,
) -> None:
    token = broker.token("bank", "buyer")
    request = broker_pb2.InvokeRequest(model=SANDBOXED, json=orjson.dumps(CHAT))
    for path, names in LABELS.items():
        request.labels[path].labels.extend(names)
    with broker.channel() as channel:
        chunks = list(
            broker_pb2_grpc.BrokerStub(channel).InvokeStream(
                request, metadata=(("authorization", f"Bearer {token}"),), timeout=120
            )
        )
    kinds = [chunk.WhichOneof("part") for chunk in chunks]
    assert kinds[0] == "decisions"
    assert kinds[-1] == "summary"
    deltas = [orjson.loads(c.delta) for c in chunks if c.WhichOneof("part") == "delta"]
    # llama.cpp's chunks, one per token, not the whole answer in one chunk.
    pieces = [d["choices"][0]["delta"].get("content", "") for d in deltas]
    assert len([piece for piece in pieces if piece]) > 2, pieces
    text = "".join(pieces)
    assert CODENAME.lower() in text.lower(), text
    # Greedy and seeded: the streamed text is the text Invoke answers.
    buyer = broker.client("bank", "buyer", max_attempts=1)
    whole = buyer.invoke(SANDBOXED, CHAT, labels=LABELS, timeout=120).answer
    assert text == whole["choices"][0]["message"]["content"]
    actions = {d.path: d.action for d in chunks[0].decisions.decisions}
    assert actions["/messages/2/content"] == "sandbox"
    summary = chunks[-1].summary
    assert summary.delta_chunks == len(deltas)
    assert summary.finish_reason in {"stop", "length"}
    assert summary.receipt.leaf_index > 0


def test_a_stream_the_buyer_leaves_early_does_not_break_the_next_call(
    broker: BrokerHarness,
) -> None:
    """Leaving mid-answer kills the generating worker; the pool starts a fresh one."""
    token = broker.token("bank", "buyer")
    request = broker_pb2.InvokeRequest(model=SANDBOXED, json=orjson.dumps(CHAT))
    for path, names in LABELS.items():
        request.labels[path].labels.extend(names)
    with broker.channel() as channel:
        call = broker_pb2_grpc.BrokerStub(channel).InvokeStream(
            request, metadata=(("authorization", f"Bearer {token}"),), timeout=120
        )
        for part in call:
            if part.WhichOneof("part") == "delta":
                call.cancel()
                break
    buyer = broker.client("bank", "buyer", max_attempts=1)
    answer = buyer.invoke(SANDBOXED, CHAT, labels=LABELS, timeout=120).answer
    assert CODENAME.lower() in answer["choices"][0]["message"]["content"].lower()

"""``Broker/InvokeStream`` on a sandboxed model that streams: live chunks, policy, restoration.

The policy here tokenizes every e-mail address the buyer sends, also for sandbox models (the
shipped policy lets them through in the sandbox), so the sandboxed model gets a token and echoes
it back three characters per chunk: the broker must put the buyer's address back together.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest

from broker._proto.broker.v1 import broker_pb2, broker_pb2_grpc, models_pb2
from broker.packages.store import PackageStore
from broker.runtimes.sandbox.launcher import SandboxLauncher
from tests.integration.harness import BrokerHarness, start_broker

pytestmark = pytest.mark.sandbox

STREAM_PACKAGE = Path(__file__).parent / "stream_pkg"
MODEL = "acme-models/streaming-echo@1.0.0"
EMAIL = "ada.lovelace@example.com"
TEXT = f"Please write to {EMAIL} about the invoice."

POLICY = """package broker

import rego.v1

decision := {
	"allow": true,
	"reasons": [],
	"default_action": "allow",
	"fields": {f.path: {"action": "allow"} | some f in input.fields},
	"entities": {label: _entity(label) | some label in _labels},
}

_labels contains e.label if some e in input.entities

_entity(label) := {"action": "tokenize"} if {
	input.direction == "request"
	label == "pii.email"
} else := {"action": "allow"}
"""


@pytest.fixture
def broker(tmp_path: Path, launcher: SandboxLauncher) -> Iterator[BrokerHarness]:
    bundle = tmp_path / "bundle" / "broker"
    bundle.mkdir(parents=True)
    (bundle / "decision.rego").write_text(POLICY)
    harness = start_broker(
        tmp_path / "var",
        f"sqlite:///{tmp_path / 'broker.db'}",
        BROKER__POLICY__BUNDLE_DIR=str(bundle.parent),
    )
    digest = PackageStore(harness.config.data_dir).add(STREAM_PACKAGE).digest
    harness.client("acme-models", "vendor").register_model(
        models_pb2.Model(
            name="streaming-echo",
            version="1.0.0",
            runtime=models_pb2.RUNTIME_SANDBOX,
            package_digest=digest,
            fields=[models_pb2.FieldSpec(path="/messages/*/content", type="string")],
        )
    )
    yield harness
    harness.stop()


def invoke_stream(broker: BrokerHarness, payload: dict[str, Any]) -> list[Any]:
    token = broker.token("bank", "buyer")
    request = broker_pb2.InvokeRequest(model=MODEL, json=orjson.dumps(payload))
    with broker.channel() as channel:
        return list(
            broker_pb2_grpc.BrokerStub(channel).InvokeStream(
                request, metadata=(("authorization", f"Bearer {token}"),), timeout=60
            )
        )


def deltas(parts: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(p.delta) for p in parts if p.WhichOneof("part") == "delta"]


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)


def test_a_streaming_sandbox_model_streams_with_the_buyers_token_restored(
    broker: BrokerHarness,
) -> None:
    parts = invoke_stream(broker, {"messages": [{"role": "user", "content": TEXT}]})
    kinds = [part.WhichOneof("part") for part in parts]
    assert kinds[0] == "decisions"
    assert kinds[-1] == "summary"
    chunks = deltas(parts)
    # The model's chunks reach the buyer as chunks, not as one answer.
    assert len(chunks) > 2
    # The model saw a token in place of the address and echoed it in three-character pieces;
    # the buyer gets the address back, whole, and no piece of the token.
    assert text_of(chunks) == TEXT
    summary = parts[-1].summary
    assert summary.restored_values == 1
    assert summary.finish_reason == "stop"
    assert summary.delta_chunks == len(chunks)
    assert summary.usage.completion_tokens > 0
    assert summary.receipt.leaf_index > 0


def test_a_package_answering_in_one_piece_still_streams_one_chunk(
    broker: BrokerHarness,
) -> None:
    parts = invoke_stream(broker, {"messages": [{"role": "user", "content": TEXT}], "whole": True})
    chunks = deltas(parts)
    assert len(chunks) == 1
    assert text_of(chunks) == TEXT
    assert parts[-1].summary.restored_values == 1


def test_a_model_failing_mid_stream_ends_the_stream_after_its_chunks(
    broker: BrokerHarness,
) -> None:
    token = broker.token("bank", "buyer")
    payload = {"messages": [{"role": "user", "content": "no personal data here"}], "fail_after": 3}
    request = broker_pb2.InvokeRequest(model=MODEL, json=orjson.dumps(payload))
    received: list[Any] = []
    with broker.channel() as channel:
        call = broker_pb2_grpc.BrokerStub(channel).InvokeStream(
            request, metadata=(("authorization", f"Bearer {token}"),), timeout=60
        )
        with pytest.raises(grpc.RpcError) as caught:
            received.extend(call)
    assert caught.value.code() is grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]
    # What the model produced before it failed reached the buyer (the first chunk holds the
    # role only; the rest of the text may be held back by the restorer, which is never flushed).
    assert [part.WhichOneof("part") for part in received][:2] == ["decisions", "delta"]
    # A model error leaves its worker usable: the next stream is complete.
    parts = invoke_stream(broker, {"messages": [{"role": "user", "content": TEXT}]})
    assert text_of(deltas(parts)) == TEXT

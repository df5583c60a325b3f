"""Every action on the answer path, through a real backend, with a policy written for the test.

The shipped policy only redacts and masks answers; here a small bundle gives each answer field
its own action, so each one is seen working on the way back to the buyer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from broker._proto.broker.v1 import broker_pb2
from tests.integration.harness import BrokerHarness, FakeBackend, fields_echo_model, start_broker

BUNDLE = """
package broker

import rego.v1

# Requests pass unchanged; each answer field gets the action named in _answer.
decision := {
	"allow": true,
	"reasons": [],
	"default_action": "allow",
	"fields": {f.path: _action(f.path) | some f in input.fields},
	"entities": {e.label: {"action": "allow"} | some e in input.entities},
}

_answer := {
	"/a": {"action": "allow"},
	"/r": {"action": "redact"},
	"/m": {"action": "mask", "keep_last": 2, "char": "#"},
	"/h": {"action": "hash"},
	"/t": {"action": "tokenize"},
	"/e": {"action": "encrypt"},
	"/s": {"action": "sandbox"},
	"/d": {"action": "drop"},
}

_action(path) := _answer[path] if input.direction == "response"

_action(path) := {"action": "allow"} if input.direction == "request"
"""
FIELDS = {name: f"/{name}" for name in "armhtesd"}


@pytest.fixture
def broker(tmp_path: Path, database_url: str, backend: FakeBackend) -> Iterator[BrokerHarness]:
    bundle = tmp_path / "bundle" / "broker"
    bundle.mkdir(parents=True)
    (bundle / "decision.rego").write_text(BUNDLE)
    harness = start_broker(
        tmp_path / "var", database_url, BROKER__POLICY__BUNDLE_DIR=str(bundle.parent)
    )
    harness.client("acme-models", "vendor").register_model(
        fields_echo_model(backend.target, FIELDS)
    )
    yield harness
    harness.stop()


def test_each_action_on_the_answer(broker: BrokerHarness, backend: FakeBackend) -> None:
    payload = {name: f"value-{name}-123456" for name in FIELDS}
    buyer = broker.client("bank", "buyer")
    reply = buyer._call(
        buyer.broker.Invoke,
        broker_pb2.InvokeRequest(model="acme-models/fields-echo@1.0.0", json=orjson.dumps(payload)),
        10,
    )
    sent = {t.name: t.contents.bytes_contents[0].decode() for t in backend.log.requests[-1].inputs}
    assert sent == payload, "the request passed unchanged"
    answer = orjson.loads(reply.json)
    assert answer["a"] == "value-a-123456"
    assert answer["r"] == "[REDACTED:field]"
    assert answer["m"] == "#####-#-####56"
    assert re.fullmatch(r"hash:[a-z2-7]{26}", answer["h"])
    # A token made on the answer path hides the value from the buyer: nothing restores it.
    assert re.fullmatch(r"TKN-[0-9A-Z]{20}", answer["t"])
    # A value encrypted under the buyer's own tenant key is opened again for that buyer.
    assert answer["e"] == "value-e-123456"
    # The buyer is not a sandbox: sandbox-only data on the answer path is redacted.
    assert answer["s"] == "[REDACTED:field]"
    assert "d" not in answer
    actions = {d.path: d.action for d in reply.decisions if d.direction == "response"}
    assert actions == {
        "/a": "allow",
        "/r": "redact",
        "/m": "mask",
        "/h": "hash",
        "/t": "tokenize",
        "/e": "encrypt",
        "/s": "redact",
        "/d": "drop",
    }

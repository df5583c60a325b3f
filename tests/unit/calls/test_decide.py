"""The decider's policy input: fields as the classification found them, shared by equal shapes."""

from __future__ import annotations

from typing import Any, cast

from broker.auth.principal import Principal, Role
from broker.calls.decide import Decider
from broker.classify.classifier import classify
from broker.policy import FieldInfo, Plan, PolicyInput, PolicyStore
from broker.registry.model import ModelVersion, Runtime

PRINCIPAL = Principal("bank", "svc", frozenset({Role.BUYER}), "https://idp", 0.0)
MODEL = ModelVersion("acme", "m", "1", Runtime.OPEN_INFERENCE_GRPC)


class _Recorder:
    """A policy store that keeps every input it is asked about."""

    def __init__(self) -> None:
        self.inputs: list[PolicyInput] = []
        self.revision = "r1"

    def decide(self, policy_input: PolicyInput) -> Plan:
        self.inputs.append(policy_input)
        return cast(Plan, None)


def _fields(payload: dict[str, Any], labels: dict[str, list[str]]) -> tuple[FieldInfo, ...]:
    store = _Recorder()
    decider = Decider(cast(PolicyStore, store))
    decider.decide("request", PRINCIPAL, MODEL, "p", classify(payload, buyer_labels=labels))
    return store.inputs[-1].fields


def test_fields_are_the_classified_paths_types_and_sorted_labels() -> None:
    fields = _fields({"b": "x", "a": [1, True]}, {"/b": ["z", "pii"]})
    assert fields == (
        FieldInfo("/b", "string", ("pii", "z")),
        FieldInfo("/a/0", "number", ()),
        FieldInfo("/a/1", "boolean", ()),
    )


def test_equal_shapes_share_fields_and_any_difference_is_seen() -> None:
    first = _fields({"a": "x", "b": 1}, {"/a": ["pii"]})
    assert _fields({"a": "other value", "b": 2}, {"/a": ["pii"]}) is first  # values: no part
    assert _fields({"a": "x", "b": 1}, {"/a": ["secret"]})[0].labels == ("secret",)
    assert _fields({"a": "x", "b": "1"}, {"/a": ["pii"]})[1].type == "string"
    assert _fields({"a": "x", "c": 1}, {"/a": ["pii"]})[1].path == "/c"
    # A detected entity is a label like any other.
    assert _fields({"a": "mail jane.doe@example.com", "b": 1}, {"/a": ["pii"]})[0].labels == (
        "pii",
        "pii.email",
    )


def test_large_shapes_are_not_kept() -> None:
    payload = {f"k{i}": i for i in range(300)}
    assert _fields(payload, {}) is not _fields(payload, {})
    assert _fields(payload, {})[299] == FieldInfo("/k299", "number", ())

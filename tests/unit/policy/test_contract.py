"""The contract parser: a malformed decision from the policy is a PolicyError, never a plan."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from broker.errors import InvalidArgument, PermissionDenied
from broker.policy.contract import (
    Action,
    PolicyError,
    PolicyInput,
    Retention,
    parse_action,
    parse_plan,
)
from tests.unit.policy.conftest import make_input

SMALL = make_input(
    fields=(("/a", "string", ("pii.email",)), ("/b", "number", ())),
    entities=(("secret.jwt", ("/a",)),),
)


def _decision(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "allow": True,
        "reasons": [],
        "fields": {"/a": {"action": "tokenize"}},
        "entities": {"secret.jwt": {"action": "redact"}},
        "retention": {"request_ttl_s": 60, "response_ttl_s": 0},
    }
    base.update(overrides)
    return base


def test_valid_decision_becomes_complete_plan() -> None:
    plan = parse_plan(_decision(), SMALL, "rev1")
    assert plan.allow is True
    assert plan.fields["/a"] == Action("tokenize")
    assert plan.fields["/b"] == Action("redact"), "unmentioned field gets the fail-closed default"
    assert plan.entities["secret.jwt"] == Action("redact")
    assert plan.retention == Retention(60, 0)
    assert plan.revision == "rev1"


def test_declared_default_action_applies_to_unmentioned_fields() -> None:
    plan = parse_plan(_decision(default_action="allow"), SMALL, "r")
    assert plan.fields["/b"] == Action("allow")
    plan = parse_plan(_decision(default_action={"action": "drop"}), SMALL, "r")
    assert plan.fields["/b"] == Action("drop")


def test_plan_is_read_only() -> None:
    plan = parse_plan(_decision(), SMALL, "r")
    with pytest.raises(TypeError):
        plan.fields["/a"] = Action("allow")  # type: ignore[index]


def test_mask_params_and_defaults() -> None:
    assert parse_action({"action": "mask"}, "x") == Action("mask", keep_last=4, char="*")
    assert parse_action({"action": "mask", "keep_last": 0, "char": "#"}, "x") == Action(
        "mask", keep_last=0, char="#"
    )


def test_whole_floats_are_integers_as_json_says() -> None:
    """OPA answers 4.0 where regorus answers 4 (a Rego ``4.0`` literal, a ``5.0`` in data.json):
    the plan must be the same whichever engine decided."""
    raw = _decision(
        fields={"/a": {"action": "mask", "keep_last": 2.0}},
        retention={"request_ttl_s": 604800.0, "response_ttl_s": -0.0},
    )
    plan = parse_plan(raw, SMALL, "r")
    assert plan.fields["/a"] == Action("mask", keep_last=2, char="*")
    assert isinstance(plan.fields["/a"].keep_last, int)
    assert plan.retention == Retention(604800, 0)
    assert isinstance(plan.retention.request_ttl_s, int)
    assert plan == parse_plan(
        _decision(
            fields={"/a": {"action": "mask", "keep_last": 2}},
            retention={"request_ttl_s": 604800, "response_ttl_s": 0},
        ),
        SMALL,
        "r",
    )


def test_deny_without_reason_gets_one() -> None:
    plan = parse_plan(_decision(allow=False), SMALL, "r")
    assert plan.allow is False and plan.reasons


def test_missing_retention_keeps_nothing() -> None:
    raw = _decision()
    del raw["retention"]
    assert parse_plan(raw, SMALL, "r").retention == Retention(0, 0)


def test_plan_round_trips_to_json_shape() -> None:
    obj = parse_plan(_decision(), SMALL, "r").to_json_obj()
    assert obj["fields"]["/b"] == {"action": "redact"}
    assert obj["retention"] == {"request_ttl_s": 60, "response_ttl_s": 0}


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (None, "must be an object"),
        ([], "must be an object"),
        ("allow", "must be an object"),
        (_decision(allow="yes"), "allow must be true or false"),
        (_decision(allow=1), "allow must be true or false"),
        (_decision(reasons="nope"), "reasons"),
        (_decision(reasons=[1]), "reasons"),
        (_decision(extra=1), "unexpected keys"),
        (_decision(fields=[]), "fields must be an object"),
        (_decision(fields={"/a": {"action": "obliterate"}}), "unknown action"),
        (_decision(fields={"/a": {"verb": "allow"}}), "unknown action"),
        (_decision(fields={"/a": 7}), "must be an object"),
        (_decision(fields={"/nope": {"action": "allow"}}), "not in the input"),
        (_decision(entities={"pii.phone": {"action": "allow"}}), "not in the input"),
        (_decision(fields={"/a": {"action": "mask", "keep_last": "4"}}), "keep_last"),
        (_decision(fields={"/a": {"action": "mask", "keep_last": True}}), "keep_last"),
        (_decision(fields={"/a": {"action": "mask", "keep_last": -1}}), "keep_last"),
        (_decision(fields={"/a": {"action": "mask", "keep_last": 4.5}}), "keep_last"),
        (_decision(fields={"/a": {"action": "mask", "char": "**"}}), "char"),
        (_decision(fields={"/a": {"action": "mask", "char": 1}}), "char"),
        (_decision(fields={"/a": {"action": "mask", "keep_lats": 4}}), "unexpected parameters"),
        (_decision(fields={"/a": {"action": "hash", "keep_last": 4}}), "unexpected parameters"),
        (_decision(default_action="vaporize"), "unknown action"),
        (_decision(retention={"request_ttl_s": -1}), "request_ttl_s"),
        (_decision(retention={"response_ttl_s": 1.5}), "response_ttl_s"),
        (_decision(retention={"request_ttl_s": "7d"}), "request_ttl_s"),
        (_decision(retention={"request_ttl_s": float("inf")}), "request_ttl_s"),
        (_decision(retention={"request_ttl_s": float("nan")}), "request_ttl_s"),
        (_decision(retention={"request_ttl_s": False}), "request_ttl_s"),
        (_decision(fields={"/a": {"action": "mask", "keep_last": -2.0}}), "keep_last"),
        (_decision(retention={"forever": True}), "retention must be"),
        (_decision(retention=[]), "retention must be"),
    ],
)
def test_malformed_decision_is_policy_error(raw: object, fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_plan(raw, SMALL, "r")
    assert fragment in info.value.reason


def test_policy_error_denies_the_call() -> None:
    err = PolicyError("boom")
    assert isinstance(err, PermissionDenied)
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    assert "boom" in err.message


@pytest.mark.parametrize(
    "bad",
    [
        {"direction": "sideways"},
        {"fields": (("/a", "string", ()), ("/a", "number", ()))},
        {"entities": (("pii.email", ("/a",)), ("pii.email", ("/b",)))},
    ],
)
def test_policy_input_rejects_ambiguous_shapes(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must"):
        make_input(**bad)


def test_input_json_has_contract_shape() -> None:
    obj = make_input(direction="response", request_labels=("pii.email",)).to_json_obj()
    assert set(obj) == {
        "direction",
        "principal",
        "model",
        "purpose",
        "fields",
        "entities",
        "request_labels",
    }
    assert set(obj["principal"]) == {"tenant", "subject", "roles", "claims"}
    assert set(obj["model"]) == {"id", "vendor", "version", "runtime", "attributes"}
    assert obj["fields"][0] == {"path": "/customer/name", "type": "string", "labels": ["pii.name"]}
    assert "request_labels" not in make_input().to_json_obj()
    assert isinstance(SMALL, PolicyInput)


def test_input_parses_from_its_json_form() -> None:
    original = make_input(direction="response", request_labels=("pii.email",))
    assert PolicyInput.from_json_obj(original.to_json_obj()) == original


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d.pop("purpose"), "purpose"),
        (lambda d: d.update(fields={}), "fields must be a list"),
        (lambda d: d["fields"].append({"path": "/z", "type": "string", "labels": [1]}), "labels"),
        (lambda d: d["principal"].update(claims=[]), "claims"),
        (lambda d: d.update(direction="up"), "direction"),
    ],
)
def test_input_json_is_checked(mutate: Any, fragment: str) -> None:
    doc = make_input().to_json_obj()
    mutate(doc)
    with pytest.raises((InvalidArgument, ValueError), match=fragment):
        PolicyInput.from_json_obj(doc)
    with pytest.raises(InvalidArgument, match="input must be an object"):
        PolicyInput.from_json_obj([])

"""Enforcement of plans on payloads: each action, entity spans, drops, hostile paths."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from broker.classify.classifier import classify
from broker.enforce import transforms
from broker.enforce.enforcer import CallScope, Enforcer
from broker.enforce.keys import TenantKeys
from broker.errors import FailedPrecondition, InvalidArgument
from broker.policy.contract import Action, Plan, Retention

KEYS = TenantKeys(b"k" * 32)
REMOTE = CallScope("bank", "call-1", to_sandbox=False)
SANDBOX = CallScope("bank", "call-1", to_sandbox=True)


def _plan(fields: dict[str, Action], entities: dict[str, Action] | None = None) -> Plan:
    return Plan(
        allow=True,
        reasons=(),
        fields=MappingProxyType(fields),
        entities=MappingProxyType(entities or {}),
        default_action=Action("redact"),
        retention=Retention(),
        revision="sha256:test",
    )


def _apply(payload: dict[str, Any], plan: Plan, scope: CallScope = REMOTE) -> Any:
    return Enforcer(KEYS).apply(payload, classify(payload), plan, scope, "request")


def test_each_field_action() -> None:
    payload = {"a": "alpha", "b": "4111111111111111", "c": "x", "d": "y", "e": "z", "f": 12}
    plan = _plan(
        {
            "/a": Action("allow"),
            "/b": Action("mask", keep_last=4, char="#"),
            "/c": Action("hash"),
            "/d": Action("tokenize"),
            "/e": Action("encrypt"),
            "/f": Action("redact"),
        },
        {"pci.card": Action("allow")},
    )
    result = _apply(payload, plan)
    out = result.payload
    assert out["a"] == "alpha"
    assert out["b"] == "############1111"
    assert out["c"].startswith("hash:")
    assert out["d"] == result.pending_tokens[0].token
    assert result.pending_tokens[0].value == "y"
    assert (
        transforms.decrypt_value(KEYS.key("bank", "encrypt"), KEYS.key_id, "bank", out["e"]) == "z"
    )
    assert out["f"] == "[REDACTED:field]"
    assert payload["e"] == "z", "the input is not modified"
    assert [d.action for d in result.decisions] == [
        "allow",
        "mask",
        "hash",
        "tokenize",
        "encrypt",
        "redact",
    ]


def test_unmentioned_fields_get_the_default_action() -> None:
    result = _apply({"a": "x", "b": "y"}, _plan({"/a": Action("allow")}))
    assert result.payload == {"a": "x", "b": "[REDACTED:field]"}


def test_drops_in_objects_and_arrays_keep_the_rest_in_place() -> None:
    payload = {"items": ["keep0", "drop1", "keep2", "drop3"], "x": {"y": 1, "z": 2}}
    plan = _plan(
        {
            "/items/0": Action("allow"),
            "/items/1": Action("drop"),
            "/items/2": Action("allow"),
            "/items/3": Action("drop"),
            "/x/y": Action("drop"),
            "/x/z": Action("allow"),
        }
    )
    assert _apply(payload, plan).payload == {"items": ["keep0", "keep2"], "x": {"z": 2}}


def test_keys_that_look_like_indices_or_paths() -> None:
    payload = {"0": {"1": "a"}, "a/b": "b", "~": "c", "": "d", "a.b[0]": "e"}
    plan = _plan(
        {
            "/0/1": Action("redact"),
            "/a~1b": Action("redact"),
            "/~0": Action("allow"),
            "/": Action("drop"),
            "/a.b[0]": Action("hash"),
        }
    )
    out = _apply(payload, plan).payload
    assert out["0"]["1"] == "[REDACTED:field]"
    assert out["a/b"] == "[REDACTED:field]"
    assert out["~"] == "c"
    assert "" not in out
    assert out["a.b[0]"].startswith("hash:")


def test_entity_actions_apply_to_spans_of_allowed_fields() -> None:
    payload = {"note": "mail ada@example.com, card 4111 1111 1111 1111, ip 10.1.2.3 end"}
    plan = _plan(
        {"/note": Action("allow")},
        {
            "pii.email": Action("redact"),
            "pci.card": Action("mask", keep_last=4, char="*"),
            "net.ip": Action("drop"),
        },
    )
    result = _apply(payload, plan)
    assert result.payload["note"] == "mail [REDACTED:pii.email], card **** **** **** 1111, ip  end"
    (decision,) = result.decisions
    assert {(e.label, e.action, e.count) for e in decision.entities} == {
        ("pii.email", "redact", 1),
        ("pci.card", "mask", 1),
        ("net.ip", "drop", 1),
    }


def test_field_action_covers_its_entities() -> None:
    payload = {"note": "mail ada@example.com"}
    plan = _plan({"/note": Action("tokenize")}, {"pii.email": Action("allow")})
    result = _apply(payload, plan)
    assert result.pending_tokens[0].value == "mail ada@example.com"
    assert result.decisions[0].entities == ()


def test_integer_fields_with_entities_become_text() -> None:
    payload = {"card": 4111111111111111}
    plan = _plan({"/card": Action("allow")}, {"pci.card": Action("mask", keep_last=4, char="*")})
    assert _apply(payload, plan).payload == {"card": "************1111"}


def test_sandbox_action_refuses_remote_and_passes_sandbox() -> None:
    payload = {"secret": "s", "note": "ada@example.com"}
    plan = _plan({"/secret": Action("sandbox"), "/note": Action("allow")})
    with pytest.raises(FailedPrecondition, match="/secret") as exc:
        _apply(payload, plan)
    assert "s" not in exc.value.details.values()
    assert (
        _apply(
            payload, _plan({"/secret": Action("sandbox"), "/note": Action("allow")}), SANDBOX
        ).payload["secret"]
        == "s"
    )
    entity_plan = _plan(
        {"/secret": Action("allow"), "/note": Action("allow")}, {"pii.email": Action("sandbox")}
    )
    with pytest.raises(FailedPrecondition, match=r"pii\.email"):
        _apply(payload, entity_plan)


def test_sandbox_on_the_answer_path_is_redacted() -> None:
    payload = {"a": "x"}
    result = Enforcer(KEYS).apply(
        payload, classify(payload), _plan({"/a": Action("sandbox")}), REMOTE, "response"
    )
    assert result.payload == {"a": "[REDACTED:field]"}
    assert result.decisions[0].action == "redact"


def test_mask_never_reveals_more_than_half() -> None:
    assert transforms.mask("abc", keep_last=4, char="*") == "**c"
    assert transforms.mask("4111-1111", keep_last=4, char="*") == "****-1111"
    assert transforms.mask("secret", keep_last=0, char="x") == "xxxxxx"


def test_ciphertext_is_bound_to_tenant() -> None:
    text = transforms.encrypt_value(KEYS.key("bank", "encrypt"), KEYS.key_id, "bank", {"n": 1})
    assert transforms.decrypt_value(KEYS.key("bank", "encrypt"), KEYS.key_id, "bank", text) == {
        "n": 1
    }
    with pytest.raises(InvalidArgument):
        transforms.decrypt_value(KEYS.key("other", "encrypt"), KEYS.key_id, "other", text)
    with pytest.raises(InvalidArgument):
        transforms.decrypt_value(
            KEYS.key("bank", "encrypt"), KEYS.key_id, "bank", text[:-4] + "AAAA"
        )


def test_keys_file_is_private_and_stable(tmp_path: Path) -> None:
    first = TenantKeys.load_or_create(tmp_path)
    second = TenantKeys.load_or_create(tmp_path)
    assert first.key("t", "hash") == second.key("t", "hash")
    assert first.key("t", "hash") != first.key("u", "hash")
    assert first.key("t", "hash") != first.key("t", "encrypt")
    path = tmp_path / "keys" / "enforcement.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert "key_id" in repr(first)
    assert first.master.hex() not in repr(first)
    path.chmod(0o644)
    from broker.config import ConfigError  # noqa: PLC0415

    with pytest.raises(ConfigError, match="chmod 600"):
        TenantKeys.load_or_create(tmp_path)


def test_decisions_are_the_same_whether_shared_or_not() -> None:
    from broker.enforce.enforcer import EntityDecision, FieldDecision  # noqa: PLC0415

    long_key = "k" * 300
    payload = {"a": "x", "b": 1, "mail": "write to jane.doe@example.com", long_key: 2, "m": 3}
    many = [f"l{i:02}" for i in range(17)]  # more labels than a shared decision may have
    labels = {"/a": ["z", "pii"], "/m": many}
    plan = _plan(
        {"/a": Action("allow"), "/b": Action("drop"), "/mail": Action("allow")},
        {"pii.email": Action("redact")},
    )

    def decisions() -> list[FieldDecision]:
        classified = classify(payload, buyer_labels=labels)
        return Enforcer(KEYS).apply(payload, classified, plan, REMOTE, "request").decisions

    first, again = decisions(), decisions()
    assert first == [
        FieldDecision("request", "/a", ("pii", "z"), "allow"),
        FieldDecision("request", "/b", (), "drop"),
        FieldDecision(
            "request", "/mail", ("pii.email",), "allow", (EntityDecision("pii.email", "redact", 1),)
        ),
        FieldDecision("request", f"/{long_key}", (), "redact"),
        FieldDecision("request", "/m", tuple(many), "redact"),
    ]
    assert again == first
    assert again[0] is first[0] and again[1] is first[1]  # plain decisions are shared
    assert all(again[i] is not first[i] for i in (2, 3, 4))

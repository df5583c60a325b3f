"""Entries: canonical bytes, the versioned schema, and no payload values."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import MappingProxyType

import pytest

from broker.audit import entry as entry_module
from broker.audit.entry import (
    FieldAction,
    admin_event,
    call_intent,
    call_outcome,
    canonical_json,
    parse_entry,
)
from broker.audit.keys import TenantKeys, load_or_create_log_signer
from broker.audit.merkle import VerificationError


def test_canonical_json_sorts_keys_and_drops_whitespace() -> None:
    assert canonical_json({"b": 1, "a": [True, None, "x"]}) == b'{"a":[true,null,"x"],"b":1}'


def test_canonical_json_sorts_by_utf16_code_units() -> None:
    # U+1F600 is a surrogate pair (0xD83D...) and sorts before U+FF61 in UTF-16 order.
    data = canonical_json({"\uff61": 1, "\U0001f600": 2})
    assert data == '{"\U0001f600":2,"\uff61":1}'.encode()


def test_canonical_json_escapes_like_json_stringify() -> None:
    assert canonical_json('a"\\\n\x01é') == b'"a\\"\\\\\\n\\u0001\xc3\xa9"'


@pytest.mark.parametrize("bad", [1.5, {"x": float("nan")}, {1: "a"}, b"bytes", 2**60, "\ud800"])
def test_canonical_json_refuses_what_it_cannot_encode(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        canonical_json(bad)


def _intent() -> bytes:
    return call_intent(
        time_us=1_700_000_000_000_000,
        call_id="c1",
        tenant="acme",
        subject="svc",
        model="v/m@1",
        vendor="v",
        policy_revision="",
        fields=[FieldAction("/b", ("x", "a"), "redact"), FieldAction("/a", (), "allow")],
        request_digest=TenantKeys(bytes(32)).digest("acme", b'{"secret":"hunter2"}'),
    ).data


def test_intent_is_versioned_canonical_and_holds_no_payload_value() -> None:
    data = _intent()
    body = parse_entry(data)
    assert body["v"] == 1
    assert body["kind"] == "call.intent"
    assert [f["path"] for f in body["fields"]] == ["/a", "/b"]
    assert body["fields"][1]["labels"] == ["a", "x"]
    assert body["request_digest"].startswith("hmac-sha256:")
    assert b"hunter2" not in data


def test_outcome_and_admin_entries() -> None:
    outcome = call_outcome(
        time_us=5, call_id="c1", tenant="acme", subject="s", model="v/m@1", vendor="v",
        intent_index=7, status="OK", latency_us=1234, response_digest="hmac-sha256:00",
    )  # fmt: skip
    assert parse_entry(outcome.data)["intent_index"] == 7
    admin = admin_event(kind="admin.model.retired", time_us=1, tenant="v", actor="a", target="t")
    assert parse_entry(admin.data)["subject"] == "a"
    with pytest.raises(ValueError, match="unknown administrative kind"):
        admin_event(kind="admin.nope", time_us=1, tenant="v", actor="a", target="t")
    with pytest.raises(ValueError, match="latency_us"):
        call_outcome(
            time_us=5, call_id="c", tenant="t", subject="s", model="m", vendor="v",
            intent_index=None, status="OK", latency_us=-1, response_digest="",
        )  # fmt: skip


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"kind":"call.intent","v":1 }',
        b'{"v":1,"kind":"call.intent"}',  # keys not sorted
        b'{"kind":"call.intent","v":2}',
        b'{"kind":"nope","v":1}',
        b'{"kind":"call.intent","v":1,"x":1.5}',
        b"\xff\xfe",
        b"x" * 300_000,
    ],
)
def test_parse_entry_refuses_non_canonical_or_unknown(data: bytes) -> None:
    with pytest.raises(VerificationError):
        parse_entry(data)


def test_tenant_keys_are_stable_distinct_and_private(tmp_path: Path) -> None:
    keys = TenantKeys.load_or_create(tmp_path)
    again = TenantKeys.load_or_create(tmp_path)
    assert keys.digest("acme", b"x") == again.digest("acme", b"x")
    assert keys.digest("acme", b"x") != keys.digest("other", b"x")
    assert (tmp_path / "audit-root-key").stat().st_mode & 0o777 == 0o600
    assert "secret" in repr(keys)
    json.dumps(keys.digest("acme", b""))


def test_root_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    TenantKeys.load_or_create(tmp_path)
    (tmp_path / "audit-root-key").chmod(0o644)
    with pytest.raises(PermissionError):
        TenantKeys.load_or_create(tmp_path)


def test_log_signer_is_created_once_and_bound_to_its_origin(tmp_path: Path) -> None:
    first = load_or_create_log_signer(tmp_path, "broker.test/audit")
    second = load_or_create_log_signer(tmp_path, "broker.test/audit")
    assert first.verifier() == second.verifier()
    assert (tmp_path / "audit-log-key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(ValueError, match="not 'other/log'"):
        load_or_create_log_signer(tmp_path, "other/log")


def test_fast_encoding_escapes_every_code_point_as_the_reference() -> None:
    # One string of every code point but the surrogates: orjson (the fast path) and json with
    # ensure_ascii=False (the reference) must escape each one alike.
    every = "".join(chr(cp) for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF)
    value = {"text": every, "list": [every[:300], {"k": every[-300:]}]}
    assert canonical_json(value) == entry_module._reference_json(value)
    assert entry_module._check_value(value, 0)  # the fast path was the one compared


def _random_value(rng: random.Random, depth: int) -> object:
    alphabet = 'aZ_~/*"\\\n\x01\x7f é\u2028\uffff\U0001f600'
    if depth > 3 or rng.random() < 0.4:
        return rng.choice(
            [
                None,
                True,
                False,
                rng.randint(-(2**53) + 1, 2**53 - 1),
                "".join(rng.choices(alphabet, k=rng.randint(0, 8))),
            ]
        )
    if rng.random() < 0.5:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = "".join(rng.choices("abcAB_-~/ 0~9", k=12))
    return {
        keys[rng.randint(0, 11) :][: rng.randint(0, 5)]: _random_value(rng, depth + 1)
        for _ in range(rng.randint(0, 5))
    }


def test_fast_encoding_equals_the_reference_on_random_entries() -> None:
    rng = random.Random(8785)
    for _ in range(2000):
        value = _random_value(rng, 0)
        assert canonical_json(value) == entry_module._reference_json(value)


def test_non_ascii_keys_take_the_reference_path() -> None:
    # orjson would sort these by code point (U+FF61 first); RFC 8785 wants UTF-16 order.
    value = {"a": {"\uff61": 1, "\U0001f600": 2}}
    assert not entry_module._check_value(value, 0)
    assert canonical_json(value) == '{"a":{"\U0001f600":2,"\uff61":1}}'.encode()


def test_mapping_subclasses_and_views_encode_as_plain_dicts() -> None:
    class Labels(dict[str, object]):
        pass

    view = MappingProxyType({"b": 1, "a": Labels(z=[1, (2, 3)], y="x")})
    assert canonical_json(view) == b'{"a":{"y":"x","z":[1,[2,3]]},"b":1}'


def test_entity_rows_record_their_count_and_field_rows_keep_their_bytes() -> None:
    with_count = FieldAction("/note", ("pii.email",), "entity.redact", 3).to_json()
    assert with_count == {
        "path": "/note",
        "labels": ["pii.email"],
        "action": "entity.redact",
        "count": 3,
    }
    # A row without a count encodes exactly as before counts existed.
    assert canonical_json(FieldAction("/a", (), "allow").to_json()) == (
        b'{"action":"allow","labels":[],"path":"/a"}'
    )
    for bad in (-1, True):
        with pytest.raises(ValueError, match="count"):
            FieldAction("/n", ("x",), "entity.mask", bad).to_json()

"""SIEM records of audit entries: OCSF events valid against the published schema, CEF escaping.

Every entry kind the log writes is turned into an OCSF event and validated with the JSON Schema
of OCSF 1.8.0 (``tests/unit/audit/ocsf_schema.py``); damaged events must fail that validation,
so the check is known to bite. CEF lines are parsed back by an independent reader that follows
the specification's escaping rules, with hostile tenant and model names.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from broker.audit.cef import escape_extension, escape_header, to_cef
from broker.audit.entry import (
    ADMIN_KINDS,
    KINDS,
    Entry,
    FieldAction,
    admin_event,
    call_intent,
    call_outcome,
    call_preview,
)
from broker.audit.export import build_export, siem_chunks, siem_line
from broker.audit.merkle import VerificationError, leaf_hash
from broker.audit.ocsf import CLASS_UID, OCSF_VERSION, PROFILES, to_ocsf
from broker.audit.query import AuditFilter
from broker.audit.siem import KIND_MEANINGS, siem_entry
from broker.audit.writer import AuditLog
from tests.unit.audit import ocsf_schema
from tests.unit.audit.conftest import ORIGIN

TIME_US = 1_765_000_000_123_456
HOSTILE = "ev|il=te\\n\\ant\nnext=line\r|"


def _intent(tenant: str = "bank", model: str = "acme/echo@1.0.0") -> Entry:
    return call_intent(
        time_us=TIME_US,
        call_id="c1",
        tenant=tenant,
        subject="bank-svc",
        model=model,
        vendor="acme",
        policy_revision="sha256:abc",
        fields=[FieldAction("customer.email", ("pii.email",), "redact")],
        request_digest="hmac-sha256:00ff",
        retention_id="r1",
    )


def _outcome(status: str, *, intent_index: int | None = 0, error: str = "") -> Entry:
    return call_outcome(
        time_us=TIME_US + 2_000,
        call_id="c1",
        tenant="bank",
        subject="bank-svc",
        model="acme/echo@1.0.0",
        vendor="acme",
        intent_index=intent_index,
        status=status,
        latency_us=12_345,
        response_digest="hmac-sha256:11ee",
        error_class=error,
        usage={"prompt_tokens": 3},
    )


def _preview(allowed: bool) -> Entry:
    return call_preview(
        time_us=TIME_US,
        call_id="p1",
        tenant="bank",
        subject="bank-svc",
        model="acme/echo@1.0.0",
        vendor="acme",
        policy_revision="sha256:abc",
        fields=[FieldAction("note", ("free_text",), "allow")],
        allowed=allowed,
    )


def _admin(kind: str) -> Entry:
    actor = "sandbox" if kind == "admin.sandbox.violation" else "ops/officer"
    return admin_event(
        kind=kind,
        time_us=TIME_US,
        tenant="bank",
        actor=actor,
        target="acme/echo@1.0.0",
        details={"reason": "ttl", "count": "1"},
    )


def every_kind() -> list[Entry]:
    """At least one entry of every kind, and every branch of the outcome mapping."""
    return [
        _intent(),
        _outcome("OK"),
        _outcome("PERMISSION_DENIED", intent_index=None, error="PermissionDenied"),
        _outcome("UNAVAILABLE", error="Unavailable"),
        _preview(allowed=True),
        _preview(allowed=False),
        *(_admin(kind) for kind in sorted(ADMIN_KINDS)),
    ]


def _events() -> list[dict[str, Any]]:
    return [to_ocsf(siem_entry(ORIGIN, i, e.data)) for i, e in enumerate(every_kind())]


def test_every_kind_has_a_meaning() -> None:
    assert set(KIND_MEANINGS) == set(KINDS)
    assert {e.kind for e in every_kind()} == set(KINDS)


@pytest.mark.parametrize("index", range(len(every_kind())))
def test_every_kind_is_a_valid_ocsf_event(index: int) -> None:
    event = _events()[index]
    assert ocsf_schema.errors(event) == []
    assert event["class_uid"] == CLASS_UID
    assert event["type_uid"] == event["class_uid"] * 100 + event["activity_id"]
    assert event["metadata"]["version"] == OCSF_VERSION
    assert tuple(event["metadata"]["profiles"]) == PROFILES


def test_the_ocsf_event_carries_the_proof_anchor() -> None:
    for index, entry in enumerate(every_kind()):
        event = to_ocsf(siem_entry(ORIGIN, index, entry.data))
        expected = hashlib.sha256(b"\x00" + entry.data).hexdigest()
        assert event["metadata"]["uid"] == expected
        assert event["metadata"]["sequence"] == index
        assert event["metadata"]["log_name"] == ORIGIN
        assert event["raw_data"].encode("utf-8") == entry.data
        assert leaf_hash(event["raw_data"].encode("utf-8")).hex() == expected
        anchor = event["unmapped"]["broker_audit"]
        assert (anchor["origin"], anchor["leaf_index"], anchor["leaf_hash"]) == (
            ORIGIN,
            index,
            expected,
        )


def test_decisions_and_status_are_mapped() -> None:
    by_key = {
        (e["api"]["operation"], e.get("status_code"), e["unmapped"]["broker_audit"].get("allowed")):
        e for e in _events()
    }  # fmt: skip
    intent = by_key["call.intent", None, None]
    assert (intent["action_id"], intent["disposition_id"]) == (1, 1)
    assert intent["policy"]["uid"] == "sha256:abc"
    assert intent["unmapped"]["broker_audit"]["fields"] == [
        {"action": "redact", "labels": ["pii.email"], "path": "customer.email"}
    ]
    denied = by_key["call.outcome", "PERMISSION_DENIED", None]
    assert (denied["status_id"], denied["action_id"], denied["disposition_id"]) == (2, 2, 2)
    assert denied["severity_id"] == 3
    assert denied["api"]["response"] == {"code": 7, "error": "PermissionDenied"}
    ok = by_key["call.outcome", "OK", None]
    assert (ok["status_id"], ok["duration"], ok["time"]) == (1, 12, (TIME_US + 2_000) // 1000)
    failed = by_key["call.outcome", "UNAVAILABLE", None]
    assert "action_id" not in failed
    assert failed["severity_id"] == 2
    assert by_key["call.preview", None, False]["authorizations"][0]["decision"] == "Denied"
    assert by_key["call.preview", None, True]["authorizations"][0]["decision"] == "Allowed"
    violation = by_key["admin.sandbox.violation", None, None]
    assert (violation["severity_id"], violation["is_alert"]) == (4, True)
    assert violation["actor"]["user"]["type_id"] == 3


def _damaged() -> list[tuple[str, Any]]:
    def drop(*path: str) -> Any:
        def edit(event: dict[str, Any]) -> None:
            *parents, last = path
            for key in parents:
                event = event[key]
            del event[last]

        return edit

    def put(value: Any, *path: str) -> Any:
        def edit(event: dict[str, Any]) -> None:
            *parents, last = path
            for key in parents:
                event = event[key]
            event[last] = value

        return edit

    return [
        ("actor", drop("actor")),
        ("src_endpoint", drop("src_endpoint")),
        ("api", drop("api", "operation")),
        ("metadata", drop("metadata", "product")),
        ("metadata", drop("metadata", "version")),
        ("time", drop("time")),
        ("severity_id", drop("severity_id")),
        ("time", put("2026-12-07T12:00:00Z", "time")),
        ("metadata/sequence", put("7", "metadata", "sequence")),
        ("activity_id", put(5, "activity_id")),
        ("severity_id", put(7, "severity_id")),
        ("category_uid", put(3, "category_uid")),
        ("type_uid", put(600305, "type_uid")),
        ("status_id", put(3, "status_id")),
        ("action_id", put(9, "action_id")),
        ("actor", put({}, "actor")),  # at_least_one of user, process, session, ...
        ("not_an_ocsf_attribute", put("x", "not_an_ocsf_attribute")),
    ]


@pytest.mark.parametrize(("where", "edit"), _damaged())
def test_the_schema_check_refuses_a_damaged_event(where: str, edit: Any) -> None:
    event = copy.deepcopy(_events()[1])  # an outcome: status and decision are set
    assert ocsf_schema.errors(event) == []
    edit(event)
    problems = ocsf_schema.errors(event, class_uid=CLASS_UID, profiles=PROFILES)
    assert problems, "the published schema accepted a damaged event"
    assert any(where in p for p in problems), problems


def test_without_the_declared_profile_the_decision_attributes_are_refused() -> None:
    event = _events()[0]
    assert ocsf_schema.errors(event, profiles=()) != []  # action_id needs security_control


def test_siem_entry_refuses_what_cannot_be_proven() -> None:
    good = _intent().data
    with pytest.raises(VerificationError, match=r"leaf 3: .*canonical"):
        siem_entry(ORIGIN, 3, good.replace(b'{"call_id"', b'{ "call_id"'))
    with pytest.raises(VerificationError, match="leaf index"):
        siem_entry(ORIGIN, -1, good)
    with pytest.raises(VerificationError, match="origin"):
        siem_entry("a\nb", 0, good)
    with pytest.raises(ValueError, match="unknown line format"):
        siem_line("xml", siem_entry(ORIGIN, 0, good))


# --- CEF -------------------------------------------------------------------------------------


def parse_cef(line: str) -> tuple[list[str], dict[str, str]]:
    """An independent CEF reader: seven header fields (``\\|``, ``\\\\``) and key=value pairs.

    Extension values end where the next unescaped `` key=`` starts; ``\\=``, ``\\\\``, ``\\n``
    and ``\\r`` are unescaped. Raises AssertionError on anything the specification forbids.
    """
    assert "\n" not in line and "\r" not in line
    header: list[str] = []
    field, i = "", 0
    while len(header) < 7:
        char = line[i]
        if char == "\\":
            assert line[i + 1] in "\\|", f"bad header escape at {i}"
            field += line[i + 1]
            i += 2
            continue
        if char == "|":
            header.append(field)
            field = ""
        else:
            field += char
        i += 1
    rest = line[i:]
    starts = [m.start() for m in re.finditer(r"(?:^| )([A-Za-z0-9_]+)=", rest)]
    pairs: dict[str, str] = {}
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(rest)
        chunk = rest[start:end].lstrip(" ")
        key, _, raw = chunk.partition("=")
        value, j = "", 0
        while j < len(raw):
            if raw[j] == "\\":
                nxt = raw[j + 1]
                assert nxt in "\\=nr", f"bad extension escape in {key}"
                value += {"n": "\n", "r": "\r"}.get(nxt, nxt)
                j += 2
                continue
            assert raw[j] != "=", f"unescaped = in {key}"
            value += raw[j]
            j += 1
        pairs[key] = value
    return header, pairs


def test_cef_escaping_survives_hostile_names() -> None:
    entry = _intent(tenant=HOSTILE, model=f"acme/{HOSTILE}@1")
    item = siem_entry(ORIGIN, 41, entry.data)
    line = to_cef(item)
    header, ext = parse_cef(line)
    assert header == [
        "CEF:0", "model-broker", "model-broker", "0.1.0", "call.intent", "Model call intent", "1",
    ]  # fmt: skip
    assert ext["cs3Label"] == "tenant"
    assert ext["cs3"] == HOSTILE
    assert ext["cs4"] == f"acme/{HOSTILE}@1"
    assert ext["cn1"] == "41"
    assert ext["cs1"] == leaf_hash(entry.data).hex()
    assert ext["cs2"] == ORIGIN
    assert ext["externalId"] == "c1"
    assert ext["cs5"] == "sha256:abc"
    assert ext["rt"] == str(TIME_US // 1000)


def test_cef_header_and_extension_escapes() -> None:
    assert escape_header("a|b\\c\nd\r\ne") == "a\\|b\\\\c d e"
    assert escape_extension("a=b\\c\nd\re|f") == "a\\=b\\\\c\\nd\\re|f"
    assert escape_extension("\r\n") == "\\n"


def test_every_kind_has_a_cef_line_with_its_anchor() -> None:
    for index, entry in enumerate(every_kind()):
        header, ext = parse_cef(to_cef(siem_entry(ORIGIN, index, entry.data)))
        assert header[4] == json.loads(entry.data)["kind"]
        assert 0 <= int(header[6]) <= 10
        assert (ext["cn1"], ext["cs1"], ext["cs2"]) == (
            str(index),
            leaf_hash(entry.data).hex(),
            ORIGIN,
        )


def test_outcome_cef_names_status_and_severity() -> None:
    header, ext = parse_cef(
        to_cef(siem_entry(ORIGIN, 2, _outcome("PERMISSION_DENIED", error="PermissionDenied").data))
    )
    assert header[6] == "5"
    assert (ext["outcome"], ext["reason"]) == ("PERMISSION_DENIED", "PermissionDenied")
    assert ext["cn2"] == "12"


# --- exports from a real log -----------------------------------------------------------------


def test_siem_exports_cover_the_pinned_checkpoint(audit_log: AuditLog, tmp_path: Path) -> None:
    for entry in every_kind():
        audit_log.append(entry)
    audit_log.checkpoint_now()
    engine = audit_log.store.engine
    for fmt in ("ocsf", "cef"):
        manifest, items = build_export(engine, audit_log.store, audit_log.verifier, AuditFilter())
        lines = b"".join(siem_chunks(fmt, manifest.origin, items)).decode().splitlines()
        assert len(lines) == len(every_kind())
        if fmt == "ocsf":
            events = [json.loads(line) for line in lines]
            assert [e["metadata"]["sequence"] for e in events] == list(range(len(lines)))
            assert all(ocsf_schema.errors(e) == [] for e in events)
        else:
            assert all(parse_cef(line)[1]["cs2"] == ORIGIN for line in lines)

"""The Audit servicer (called directly, principal set as the interceptor would) and the CLI."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from broker._proto.broker.v1 import audit_pb2
from broker.audit.export import MANIFEST_FILE
from broker.audit.note import Signer
from broker.audit.writer import AuditLog
from broker.auth.principal import Principal, Role
from broker.cli import audit as audit_cli
from broker.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from broker.server.audit_hooks import entry_views
from broker.server.audit_service import AuditServicer
from broker.server.context import principal_var
from tests.unit.audit.conftest import make_intent
from tests.unit.audit.tamper import drop_triggers, execute

CONTEXT = cast(grpc.ServicerContext, None)


@contextmanager
def acting_as(tenant: str, *roles: Role) -> Iterator[None]:
    principal = Principal(
        tenant=tenant, subject=f"svc@{tenant}", roles=frozenset(roles), issuer="i", expires_at=0.0
    )
    token = principal_var().set(principal)
    try:
        yield
    finally:
        principal_var().reset(token)


@pytest.fixture
def servicer(audit_log: AuditLog) -> AuditServicer:
    for i in range(6):
        audit_log.append(make_intent(tenant="acme" if i % 2 else "globex", call_id=f"c{i}"))
    audit_log.checkpoint_now()
    return AuditServicer(audit_log.store.engine, audit_log.store, audit_log.verifier)


def _query(servicer: AuditServicer, **filters: Any) -> list[audit_pb2.AuditEntry]:
    request = audit_pb2.QueryEntriesRequest(filter=audit_pb2.AuditFilter(**filters))
    return list(servicer.QueryEntries(request, CONTEXT))


def test_compliance_sees_only_its_tenant(servicer: AuditServicer) -> None:
    with acting_as("acme", Role.COMPLIANCE):
        assert [e.leaf_index for e in _query(servicer)] == [1, 3, 5]
        with pytest.raises(PermissionDenied):
            _query(servicer, tenant="globex")
        with pytest.raises(NotFound):  # another tenant's entry looks like an absent one
            servicer.GetInclusionProof(audit_pb2.GetInclusionProofRequest(leaf_index=0), CONTEXT)
    with acting_as("ops", Role.AUDITOR):
        assert len(_query(servicer)) == 6
    with acting_as("acme", Role.BUYER), pytest.raises(PermissionDenied):
        _query(servicer)


def test_paging_carries_the_token_on_the_last_entry(servicer: AuditServicer) -> None:
    with acting_as("ops", Role.ADMIN):
        first = list(servicer.QueryEntries(audit_pb2.QueryEntriesRequest(page_size=4), CONTEXT))
        assert [e.next_page_token != "" for e in first] == [False, False, False, True]
        rest = servicer.QueryEntries(
            audit_pb2.QueryEntriesRequest(page_size=4, page_token=first[-1].next_page_token),
            CONTEXT,
        )
        assert [e.leaf_index for e in rest] == [4, 5]


def test_proofs_checkpoint_and_export(servicer: AuditServicer, audit_log: AuditLog) -> None:
    with acting_as("acme", Role.COMPLIANCE):
        proof = servicer.GetInclusionProof(
            audit_pb2.GetInclusionProofRequest(call_id="c3"), CONTEXT
        )
        assert [p.leaf_index for p in proof.proofs] == [3]
        checkpoint = servicer.GetCheckpoint(audit_pb2.GetCheckpointRequest(), CONTEXT)
        assert checkpoint.vkey == audit_log.verifier.to_vkey()
        consistency = servicer.GetConsistencyProof(
            audit_pb2.GetConsistencyProofRequest(size1=2), CONTEXT
        )
        assert consistency.size2 == checkpoint.tree_size
        with pytest.raises(InvalidArgument):
            servicer.GetConsistencyProof(audit_pb2.GetConsistencyProofRequest(size1=99), CONTEXT)
        chunks = list(servicer.Export(audit_pb2.ExportRequest(format="csv"), CONTEXT))
        assert json.loads(chunks[0].manifest_json)["filters"] == {"tenant": "acme"}
        with pytest.raises(InvalidArgument):
            list(servicer.Export(audit_pb2.ExportRequest(format="xml"), CONTEXT))


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    audit_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["audit", *argv])
    return int(args.handler(args))


def test_cli_verifies_exports_and_receipts_offline(
    servicer: AuditServicer, audit_log: AuditLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vkey = audit_log.verifier.to_vkey()
    with acting_as("ops", Role.AUDITOR):
        chunks = list(servicer.Export(audit_pb2.ExportRequest(format="jsonl"), CONTEXT))
        csv_chunks = list(servicer.Export(audit_pb2.ExportRequest(format="csv"), CONTEXT))
        proof = servicer.GetInclusionProof(
            audit_pb2.GetInclusionProofRequest(call_id="c2"), CONTEXT
        )
    export = tmp_path / "log.jsonl"
    export.write_bytes(b"".join(c.data for c in chunks))
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    (csv_dir / MANIFEST_FILE).write_text(csv_chunks[0].manifest_json)
    (csv_dir / "entries.csv").write_bytes(b"".join(c.data for c in csv_chunks))
    key_file = tmp_path / "log.vkey"
    key_file.write_text(vkey + "\n")
    receipt = tmp_path / "receipt.jsonl"
    receipt.write_text(proof.proofs[0].receipt_json + "\n")

    assert _cli("verify", str(export), "--log-key", vkey) == 0
    assert "OK complete log: 6 entries" in capsys.readouterr().out
    assert _cli("verify", str(csv_dir), "--log-key", str(key_file)) == 0
    assert _cli("verify-receipt", str(receipt), "--log-key", vkey) == 0
    assert "OK leaf 2" in capsys.readouterr().out

    lines = export.read_text().splitlines()
    lines[3] = lines[3].replace("globex", "globey")
    export.write_text("\n".join(lines) + "\n")
    assert _cli("verify", str(export), "--log-key", vkey) == 1
    assert "INVALID: leaf 2" in capsys.readouterr().err
    for bad in ("{", "[]", "null", "not json\nat all"):
        receipt.write_text(bad)
        assert _cli("verify-receipt", str(receipt), "--log-key", vkey) == 1
    assert _cli("verify", str(tmp_path / "missing"), "--log-key", vkey) == 1
    assert _cli("verify", str(export), "--log-key", "garbage+key") == 1
    assert "INVALID" in capsys.readouterr().err


def test_cli_refuses_a_receipt_file_nested_too_deep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found with the audit_receipt fuzz harness: json's RecursionError escaped _read_receipts,
    # so verify-receipt printed a traceback instead of INVALID.
    vkey = Signer.generate("example.com/log").verifier().to_vkey()
    receipt = tmp_path / "receipt.json"
    for text in ("[" * 5000, '{"format": 1}\n' + "[" * 5000):
        receipt.write_text(text)
        assert _cli("verify-receipt", str(receipt), "--log-key", vkey) == 1
        assert "INVALID" in capsys.readouterr().err


def test_get_entry_records_the_view_first_and_hides_other_tenants(audit_log: AuditLog) -> None:
    for i in range(4):
        audit_log.append(make_intent(tenant="acme" if i % 2 else "globex", call_id=f"v{i}"))
    audit_log.checkpoint_now()
    servicer = AuditServicer(
        audit_log.store.engine, audit_log.store, audit_log.verifier, on_view=entry_views(audit_log)
    )
    with acting_as("acme", Role.COMPLIANCE):
        entry = servicer.GetEntry(audit_pb2.GetEntryRequest(leaf_index=1), CONTEXT)
        assert entry.call_id == "v1"
        with pytest.raises(NotFound):  # globex's entry: exactly as absent, and no view recorded
            servicer.GetEntry(audit_pb2.GetEntryRequest(leaf_index=0), CONTEXT)
        with pytest.raises(NotFound):
            servicer.GetEntry(audit_pb2.GetEntryRequest(leaf_index=99), CONTEXT)
        with pytest.raises(InvalidArgument):
            servicer.GetEntry(audit_pb2.GetEntryRequest(leaf_index=-1), CONTEXT)
        views = _query(servicer, kind="admin.audit.viewed")
    assert len(views) == 1
    body = json.loads(views[0].entry)
    assert body["tenant"] == "acme"
    assert body["subject"] == "acme/svc@acme"
    assert body["target"] == "1"
    assert body["details"] == {"call_id": "v1", "entry_kind": "call.intent"}
    with acting_as("acme", Role.BUYER), pytest.raises(PermissionDenied):
        servicer.GetEntry(audit_pb2.GetEntryRequest(leaf_index=1), CONTEXT)


def test_get_entry_shows_nothing_when_the_view_cannot_be_recorded(audit_log: AuditLog) -> None:
    audit_log.append(make_intent(tenant="acme", call_id="w0"))

    def broken(*_: object) -> None:
        raise RuntimeError("audit store down")

    servicer = AuditServicer(
        audit_log.store.engine, audit_log.store, audit_log.verifier, on_view=broken
    )
    with acting_as("acme", Role.COMPLIANCE), pytest.raises(RuntimeError):
        servicer.GetEntry(audit_pb2.GetEntryRequest(leaf_index=0), CONTEXT)


def test_policy_revision_filter_is_exact(servicer: AuditServicer) -> None:
    with acting_as("ops", Role.ADMIN):
        assert len(_query(servicer, policy_revision="rev-1")) == 6
        assert _query(servicer, policy_revision="rev-") == []  # a prefix is not the revision
        assert _query(servicer, policy_revision="rev-1", tenant="acme")[0].tenant == "acme"
        with pytest.raises(InvalidArgument):
            _query(servicer, policy_revision="rev_1")  # outside the revision charset


def test_query_from_a_start_index(servicer: AuditServicer) -> None:
    with acting_as("ops", Role.AUDITOR):
        request = audit_pb2.QueryEntriesRequest(start_index=4)
        assert [e.leaf_index for e in servicer.QueryEntries(request, CONTEXT)] == [4, 5]
        request = audit_pb2.QueryEntriesRequest(start_index=6)
        assert list(servicer.QueryEntries(request, CONTEXT)) == []
        with pytest.raises(InvalidArgument, match="start_index"):
            list(servicer.QueryEntries(audit_pb2.QueryEntriesRequest(start_index=-1), CONTEXT))
    with acting_as("acme", Role.COMPLIANCE):  # the tenant is still forced
        request = audit_pb2.QueryEntriesRequest(start_index=2)
        assert [e.leaf_index for e in servicer.QueryEntries(request, CONTEXT)] == [3, 5]


@pytest.mark.parametrize("fmt", ["ocsf", "cef"])
def test_siem_exports_are_scoped_and_anchored(servicer: AuditServicer, fmt: str) -> None:
    with acting_as("acme", Role.COMPLIANCE):
        chunks = list(servicer.Export(audit_pb2.ExportRequest(format=fmt), CONTEXT))
    lines = b"".join(c.data for c in chunks).decode().splitlines()
    assert len(lines) == 3
    if fmt == "ocsf":
        events = [json.loads(line) for line in lines]
        assert [e["metadata"]["sequence"] for e in events] == [1, 3, 5]
        assert {e["metadata"]["tenant_uid"] for e in events} == {"acme"}
    else:
        assert [line.split("cn1=")[1].split(" ")[0] for line in lines] == ["1", "3", "5"]
        assert all(line.startswith("CEF:0|model-broker|") for line in lines)


def test_a_siem_export_refuses_a_damaged_entry(servicer: AuditServicer) -> None:
    engine = servicer._engine
    drop_triggers(engine)
    execute(engine, "UPDATE audit_entries SET entry = :e WHERE leaf_index = 2", e=b"{not json")
    with acting_as("ops", Role.AUDITOR), pytest.raises(FailedPrecondition, match="leaf 2"):
        list(servicer.Export(audit_pb2.ExportRequest(format="ocsf"), CONTEXT))


def test_tail_and_export_refuse_bad_arguments_before_connecting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--from-index must not be negative"):
        _cli("tail", "--from-index", "-1", "--token", "t")
    with pytest.raises(ValueError, match="--poll and --max-backoff must be positive"):
        _cli("tail", "--poll", "0", "--token", "t")
    with pytest.raises(ValueError, match="csv export is a directory"):
        _cli("export", "--format", "csv", "-o", "-", "--token", "t")
    with pytest.raises(SystemExit):  # argparse: not a line format
        _cli("tail", "--format", "csv", "--token", "t")

"""Queries, exports and the offline verifier, including every tampering case of issue 4."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from broker.audit.checkpoint import Checkpoint, sign_checkpoint
from broker.audit.export import build_export, build_receipts, read_export, write_export
from broker.audit.merkle import VerificationError
from broker.audit.note import Signer
from broker.audit.query import AuditFilter, query_page
from broker.audit.verify import AuditVerificationError, verify_export, verify_receipt
from broker.audit.writer import AuditLog
from broker.errors import InvalidArgument
from tests.unit.audit.conftest import ORIGIN, make_intent
from tests.unit.audit.tamper import drop_triggers, execute

SIZE = 12


@pytest.fixture
def filled(audit_log: AuditLog) -> AuditLog:
    """12 entries: even ones for acme, odd ones for globex; one checkpoint at 12."""
    for i in range(SIZE):
        audit_log.append(
            make_intent(tenant="acme" if i % 2 == 0 else "globex", call_id=f"call-{i}", time_us=i)
        )
    audit_log.checkpoint_now()
    return audit_log


def _export(log: AuditLog, tmp_path: Path, fmt: str = "jsonl", **filters: str) -> Path:
    engine = log.store.engine
    manifest, items = build_export(engine, log.store, log.verifier, AuditFilter(**filters))
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"export.{fmt}"
    write_export(path, fmt, manifest, items)
    return path


def _verify(log: AuditLog, path: Path, trusted: tuple[str, ...] = ()) -> int:
    manifest, items = read_export(path)
    return verify_export(manifest, items, log.verifier, trusted_checkpoints=trusted).entries


def test_query_filters_and_pages(filled: AuditLog) -> None:
    engine = filled.store.engine
    rows, cursor = query_page(engine, AuditFilter(tenant="acme"), page_size=4)
    assert [r.leaf_index for r in rows] == [0, 2, 4, 6]
    rows, cursor = query_page(engine, AuditFilter(tenant="acme"), page_size=4, cursor=cursor)
    assert [r.leaf_index for r in rows] == [8, 10]
    assert cursor == ""
    assert len(query_page(engine, AuditFilter(action="redact"))[0]) == SIZE
    assert len(query_page(engine, AuditFilter(label="pii.email"))[0]) == SIZE
    assert query_page(engine, AuditFilter(label="pii"))[0] == []  # whole labels only
    assert query_page(engine, AuditFilter(action="%"))[0] == []  # LIKE wildcards are escaped
    assert [r.leaf_index for r in query_page(engine, AuditFilter(call_id="call-3"))[0]] == [3]
    window = AuditFilter(time_from_us=3, time_to_us=6)
    assert [r.leaf_index for r in query_page(engine, window)[0]] == [3, 4, 5]
    assert query_page(engine, AuditFilter(status="OK", model="v/m@1"))[0] == []


def test_cursors_are_bound_to_their_filter(filled: AuditLog) -> None:
    engine = filled.store.engine
    _, cursor = query_page(engine, AuditFilter(tenant="acme"), page_size=1)
    with pytest.raises(InvalidArgument, match="other filters"):
        query_page(engine, AuditFilter(tenant="globex"), cursor=cursor)
    for bad in ("???", "eyJ4IjoxfQ==", "bnVsbA=="):
        with pytest.raises(InvalidArgument, match="malformed"):
            query_page(engine, AuditFilter(), cursor=bad)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_complete_and_filtered_exports_verify(filled: AuditLog, tmp_path: Path, fmt: str) -> None:
    assert _verify(filled, _export(filled, tmp_path, fmt)) == SIZE
    assert _verify(filled, _export(filled, tmp_path / "acme", fmt, tenant="acme")) == SIZE // 2


def test_export_with_several_checkpoints_verifies(filled: AuditLog, tmp_path: Path) -> None:
    filled.append(make_intent())
    filled.checkpoint_now()
    path = _export(filled, tmp_path, tenant="acme")
    manifest, _ = read_export(path)
    assert len(manifest.checkpoints) >= 1  # the background checkpointer may add more
    assert _verify(filled, path) == SIZE // 2 + 1


def _tampered(filled: AuditLog, tmp_path: Path, *statements: str) -> AuditVerificationError:
    engine = filled.store.engine
    drop_triggers(engine)
    for sql in statements:
        execute(engine, sql)
    with pytest.raises(AuditVerificationError) as info:
        _verify(filled, _export(filled, tmp_path))
    return info.value


def test_query_columns_are_not_what_is_proven(filled: AuditLog, tmp_path: Path) -> None:
    """Editing a denormalised column does not change the committed bytes: still verifies."""
    engine = filled.store.engine
    drop_triggers(engine)
    execute(engine, "UPDATE audit_entries SET tenant = 'x' WHERE leaf_index = 5")
    assert _verify(filled, _export(filled, tmp_path)) == SIZE


def test_edited_committed_bytes_are_named(filled: AuditLog, tmp_path: Path) -> None:
    engine = filled.store.engine
    drop_triggers(engine)
    with engine.begin() as conn:
        data = conn.execute(
            sa.text("SELECT entry FROM audit_entries WHERE leaf_index = 5")
        ).scalar()
        edited = bytes(data).replace(b"globex", b"acme00")
        conn.execute(
            sa.text("UPDATE audit_entries SET entry = :e WHERE leaf_index = 5"), {"e": edited}
        )
    with pytest.raises(AuditVerificationError) as info:
        _verify(filled, _export(filled, tmp_path))
    assert info.value.index == 5


def test_deleted_row_is_named(filled: AuditLog, tmp_path: Path) -> None:
    error = _tampered(filled, tmp_path, "DELETE FROM audit_entries WHERE leaf_index = 4")
    assert error.index == 4
    assert "missing" in str(error)


def test_swapped_rows_are_named(filled: AuditLog, tmp_path: Path) -> None:
    error = _tampered(
        filled,
        tmp_path,
        "UPDATE audit_entries SET leaf_index = -3 WHERE leaf_index = 3",
        "UPDATE audit_entries SET leaf_index = 3 WHERE leaf_index = 7",
        "UPDATE audit_entries SET leaf_index = 7 WHERE leaf_index = -3",
    )
    assert error.index == 3


def test_truncated_log_is_named(filled: AuditLog, tmp_path: Path) -> None:
    old = filled.store.latest_checkpoint()
    assert old is not None
    error = _tampered(filled, tmp_path, "DELETE FROM audit_entries WHERE leaf_index >= 8")
    assert error.index == 8
    assert "truncated" in str(error)


def test_truncation_hidden_from_the_database_is_caught_with_an_old_checkpoint(
    filled: AuditLog, tmp_path: Path
) -> None:
    filled.close()  # no background checkpoint may race the operator's tampering below
    old = filled.store.latest_checkpoint()
    assert old is not None
    engine = filled.store.engine
    drop_triggers(engine)
    execute(engine, "DELETE FROM audit_checkpoints")
    execute(engine, "DELETE FROM audit_entries WHERE leaf_index >= 8")
    execute(engine, "DELETE FROM audit_nodes WHERE (node_index + 1) * (1 << level) > 8")
    filled.checkpoint_now()  # the operator re-signs a head for the shorter log
    path = _export(filled, tmp_path)
    assert _verify(filled, path) == 8  # consistent by itself...
    with pytest.raises(AuditVerificationError, match="truncated") as info:
        _verify(filled, path, trusted=(old.note,))  # ...but not with what the auditor saw
    assert info.value.index == 8


def _rewrite_manifest(path: Path, **changes: object) -> None:
    lines = path.read_text().split("\n")
    manifest = json.loads(lines[0])
    manifest.update(changes)
    lines[0] = json.dumps(manifest)
    path.write_text("\n".join(lines))


def test_bad_checkpoint_signature(filled: AuditLog, tmp_path: Path) -> None:
    path = _export(filled, tmp_path)
    manifest, _ = read_export(path)
    lines = manifest.checkpoint.split("\n")
    lines[1] = "13"
    _rewrite_manifest(path, checkpoint="\n".join(lines))
    with pytest.raises(AuditVerificationError, match="does not verify"):
        _verify(filled, path)


def test_fork_is_detected(filled: AuditLog, signer: Signer, tmp_path: Path) -> None:
    path = _export(filled, tmp_path)
    forked = sign_checkpoint(Checkpoint(ORIGIN, SIZE, bytes(32)), signer)
    _rewrite_manifest(path, checkpoints=[{"note": forked, "proof": None}])
    with pytest.raises(AuditVerificationError, match="fork"):
        _verify(filled, path)


def test_export_checked_against_another_log_key(filled: AuditLog, tmp_path: Path) -> None:
    manifest, items = read_export(_export(filled, tmp_path))
    other = Signer.generate(ORIGIN).verifier()
    with pytest.raises(AuditVerificationError, match="another log key"):
        verify_export(manifest, items, other)
    with pytest.raises(AuditVerificationError, match="does not verify"):
        verify_export(dataclasses.replace(manifest, vkey=other.to_vkey()), items, other)


@pytest.mark.parametrize(
    "content",
    [
        "",
        "not json\n",
        '{"format":"nope"}\n',
        '{"format":"broker-audit-export/v1"}\n',
        '{"format":"broker-audit-export/v1","origin":"o","vkey":"k","checkpoint":"c",'
        '"complete":true}\n{"leaf_index":"x","entry":"{}","proof":[]}\n',
        '{"format":"broker-audit-export/v1","origin":"o","vkey":"k","checkpoint":"c",'
        '"complete":true}\n{"leaf_index":0,"entry":"{}","proof":["!!"]}\n',
        '{"format":"broker-audit-export/v1","origin":"o","vkey":"k","checkpoint":"c",'
        '"complete":true}\n[1]\n',
    ],
)
def test_malformed_exports_are_clear_errors(filled: AuditLog, tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(VerificationError):
        _verify(filled, path)


def test_receipts_verify_and_catch_another_log(filled: AuditLog) -> None:
    engine = filled.store.engine
    (receipt,) = build_receipts(filled.store, engine, AuditFilter(call_id="call-4"))
    report = verify_receipt(receipt, filled.verifier)
    assert (report.leaf_index, report.call_id, report.size) == (4, "call-4", SIZE)
    with pytest.raises(AuditVerificationError, match="does not verify"):
        verify_receipt(receipt, Signer.generate(ORIGIN).verifier())
    with pytest.raises(AuditVerificationError, match="for log"):
        verify_receipt(receipt, Signer.generate("other.log/audit").verifier())
    for bad in (
        {**receipt, "leaf_index": 5},
        {**receipt, "entry": receipt["entry"].replace("acme", "acmf")},
        {**receipt, "proof": receipt["proof"][:-1]},
        {**receipt, "proof": None},
        {**receipt, "proof": "x"},
        {**receipt, "leaf_index": True},
        {**receipt, "checkpoint": 7},
        {**receipt, "format": "x"},
        [receipt],
        None,
    ):
        with pytest.raises(VerificationError):
            verify_receipt(bad, filled.verifier)


def test_a_csv_leaf_index_too_long_for_int_is_a_clear_error(tmp_path: Path) -> None:
    # Found with the audit_export fuzz harness: int() refuses digit strings over 4300 digits
    # with a bare ValueError, which escaped read_export and `broker audit verify`.
    (tmp_path / "manifest.json").write_text(
        '{"format":"broker-audit-export/v1","origin":"o","vkey":"k","checkpoint":"c",'
        '"complete":true}'
    )
    for digits in ("1" * 5000, "1" * 21):
        (tmp_path / "entries.csv").write_text(f"leaf_index,entry,proof\n{digits},{{}},\n")
        with pytest.raises(VerificationError, match="row 2 leaf_index is not a leaf index"):
            read_export(tmp_path)

"""Export bundles and receipts: everything an auditor needs to verify offline, and nothing more.

An export is pinned to one signed checkpoint (the newest the store can prove against) and holds:

- a manifest: format, origin, the log's vkey (informational: the auditor brings the trusted key),
  the checkpoint, every other stored checkpoint with a consistency proof to it, the filters used
  and whether the export is *complete* (every leaf below the checkpoint size, no filter);
- the entries in leaf order, each with its leaf index, canonical bytes (as text: canonical JSON
  is UTF-8 without raw newlines, so the text re-encodes to the exact bytes) and its inclusion
  proof against the checkpoint.

Two encodings of the same content: JSONL (a single file, manifest on the first line) and CSV (a
directory holding ``manifest.json`` and ``entries.csv``). A receipt is one entry with its proof
and checkpoint, as JSON. Hashes are standard base64, like the checkpoint's root.

Two more encodings are for SIEMs rather than for offline verification: OCSF (one JSON event per
line, :mod:`broker.audit.ocsf`) and CEF (one line per entry, :mod:`broker.audit.cef`). They carry
no proofs, only each entry's anchor (origin, leaf index, hex leaf hash), which
``broker audit prove`` turns into a receipt later (:mod:`broker.audit.siem`).

Reading is strict: anything malformed raises :class:`VerificationError` naming what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import csv
import dataclasses
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa

from broker.audit.cef import to_cef
from broker.audit.merkle import VerificationError
from broker.audit.note import Verifier
from broker.audit.ocsf import to_ocsf
from broker.audit.query import AuditFilter, StoredEntry, iter_entries
from broker.audit.siem import SiemEntry, siem_entry
from broker.audit.store import AuditStore, StoredCheckpoint
from broker.errors import BrokerError, FailedPrecondition, NotFound

EXPORT_FORMAT: Final = "broker-audit-export/v1"
RECEIPT_FORMAT: Final = "broker-audit-receipt/v1"
MANIFEST_FILE: Final = "manifest.json"
ENTRIES_FILE: Final = "entries.csv"
CSV_COLUMNS: Final = (
    "leaf_index", "time_us", "kind", "tenant", "subject", "model", "vendor", "call_id",
    "status", "entry", "proof",
)  # fmt: skip
_PROOF_BATCH: Final = 256
#: Line formats for SIEMs and log shippers: the entry with its anchor, OCSF, CEF.
LINE_FORMATS: Final = ("jsonl", "ocsf", "cef")


def b64(raw: bytes) -> str:
    """Standard base64 text of ``raw``."""
    return base64.b64encode(raw).decode("ascii")


def unb64(text: object, what: str) -> bytes:
    """Strict base64 decoding of untrusted ``text``; VerificationError naming ``what``."""
    if not isinstance(text, str):
        raise VerificationError(f"{what} must be base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise VerificationError(f"{what} is not valid base64") from exc


@dataclass(frozen=True)
class Manifest:
    """The header of an export (see the module docstring)."""

    origin: str
    vkey: str
    checkpoint: str
    complete: bool
    filters: dict[str, Any] = field(default_factory=dict)
    #: Other checkpoints: ``{"note": text, "proof": [b64...] or None}``; proof to ``checkpoint``.
    checkpoints: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The manifest as a JSON object."""
        return {
            "format": EXPORT_FORMAT,
            "origin": self.origin,
            "vkey": self.vkey,
            "checkpoint": self.checkpoint,
            "complete": self.complete,
            "filters": self.filters,
            "checkpoints": self.checkpoints,
        }

    @classmethod
    def from_json(cls, data: object) -> Manifest:
        """Parse an untrusted manifest object."""
        if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
            raise VerificationError(f"not a {EXPORT_FORMAT} manifest")
        origin, vkey, note = data.get("origin"), data.get("vkey"), data.get("checkpoint")
        complete, filters, others = (
            data.get("complete"),
            data.get("filters", {}),
            data.get("checkpoints", []),
        )
        if not all(isinstance(v, str) for v in (origin, vkey, note)) or not isinstance(
            complete, bool
        ):
            raise VerificationError("manifest needs origin, vkey, checkpoint text and complete")
        if not isinstance(filters, dict) or not isinstance(others, list):
            raise VerificationError("manifest filters or checkpoints are malformed")
        return cls(str(origin), str(vkey), str(note), complete, filters, others)


@dataclass(frozen=True, slots=True)
class ExportedEntry:
    """One exported leaf: index, canonical bytes and the inclusion proof (None if unavailable)."""

    leaf_index: int
    entry: bytes
    proof: list[bytes] | None


def build_export(
    engine: sa.Engine, store: AuditStore, verifier: Verifier, flt: AuditFilter
) -> tuple[Manifest, Iterator[ExportedEntry]]:
    """The manifest and a lazy iterator over the matching entries with their proofs.

    Pinned to the newest checkpoint whose nodes are stored, so proofs can be built; any
    checkpoint beyond it (a truncated log) is still listed, for the verifier to flag.
    """
    main = _provable_checkpoint(store)
    others = [_other(store, cp, main) for cp in store.checkpoints() if cp.size != main.size]
    manifest = Manifest(
        origin=main.note.split("\n", 1)[0],
        vkey=verifier.to_vkey(),
        checkpoint=main.note,
        complete=flt.is_empty(),
        filters=flt.as_dict(),
        checkpoints=others,
    )
    pinned = AuditFilter(**{**flt.as_dict(), "below_size": main.size})
    return manifest, _with_proofs(store, iter_entries(engine, pinned), main.size)


def _provable_checkpoint(store: AuditStore) -> StoredCheckpoint:
    """The newest checkpoint whose tree nodes are all stored (normally simply the newest)."""
    for checkpoint in reversed(store.checkpoints()):
        try:
            store.root(checkpoint.size)
        except BrokerError:
            continue  # nodes are gone: the verifier will flag the truncation
        return checkpoint
    raise FailedPrecondition("the audit log has no checkpoint yet; try again in a second")


def _other(store: AuditStore, cp: StoredCheckpoint, main: StoredCheckpoint) -> dict[str, Any]:
    proof: list[str] | None = None
    if cp.size < main.size:
        try:
            proof = [b64(h) for h in store.consistency_proof(cp.size, main.size)]
        except BrokerError:
            proof = None
    return {"note": cp.note, "proof": proof}


def _with_proofs(
    store: AuditStore, rows: Iterable[StoredEntry], size: int
) -> Iterator[ExportedEntry]:
    batch: list[StoredEntry] = []
    for row in rows:
        batch.append(row)
        if len(batch) == _PROOF_BATCH:
            yield from _prove_batch(store, batch, size)
            batch = []
    yield from _prove_batch(store, batch, size)


def _prove_batch(store: AuditStore, batch: list[StoredEntry], size: int) -> Iterator[ExportedEntry]:
    """Proofs for a batch in one query; one by one (None where impossible) if nodes are gone."""
    if not batch:
        return
    try:
        proofs: dict[int, list[bytes] | None] = dict(
            store.inclusion_proofs([r.leaf_index for r in batch], size)
        )
    except BrokerError:
        proofs = {}
        for row in batch:
            try:
                proofs[row.leaf_index] = store.inclusion_proof(row.leaf_index, size)
            except BrokerError:
                proofs[row.leaf_index] = None
    for row in batch:
        yield ExportedEntry(row.leaf_index, row.entry, proofs[row.leaf_index])


def _entry_json(item: ExportedEntry) -> dict[str, Any]:
    proof = None if item.proof is None else [b64(h) for h in item.proof]
    return {
        "leaf_index": item.leaf_index,
        "entry": item.entry.decode("utf-8", "replace"),
        "proof": proof,
    }


def jsonl_chunks(manifest: Manifest, items: Iterable[ExportedEntry]) -> Iterator[bytes]:
    """The JSONL file, line by line: the manifest, then one entry per line."""
    yield _line(manifest.to_json())
    for item in items:
        yield _line(_entry_json(item))


def csv_chunks(items: Iterable[ExportedEntry]) -> Iterator[bytes]:
    """``entries.csv``, row by row, with a header; the entry's columns are copied for reading."""
    for row in _csv_rows(items):
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerow(row)
        yield out.getvalue().encode("utf-8")


def _csv_rows(items: Iterable[ExportedEntry]) -> Iterator[list[str]]:
    yield list(CSV_COLUMNS)
    for item in items:
        try:
            body = json.loads(item.entry)
        except ValueError:  # a damaged row is still exported, for the verifier to name it
            body = {}
        if not isinstance(body, dict):
            body = {}
        proof = "" if item.proof is None else " ".join(b64(h) for h in item.proof)
        yield [
            str(item.leaf_index),
            *(str(body.get(k, "")) for k in CSV_COLUMNS[1:9]),
            item.entry.decode("utf-8", "replace"),
            proof,
        ]


def siem_line(fmt: str, item: SiemEntry) -> bytes:
    """One line (with its line break) of a SIEM format for one entry.

    ``jsonl`` is the entry's anchor and its canonical text (what ``broker audit tail`` prints by
    default); ``ocsf`` and ``cef`` are described in their modules.
    """
    if fmt == "ocsf":
        return _line(to_ocsf(item))
    if fmt == "cef":
        return to_cef(item).encode("utf-8") + b"\n"
    if fmt == "jsonl":
        return _line({**item.anchor(), "entry": item.text})
    raise ValueError(f"unknown line format {fmt!r}; use one of {', '.join(LINE_FORMATS)}")


def siem_chunks(fmt: str, origin: str, items: Iterable[ExportedEntry]) -> Iterator[bytes]:
    """An OCSF or CEF export, line by line; VerificationError at the first malformed entry."""
    for item in items:
        yield siem_line(fmt, siem_entry(origin, item.leaf_index, item.entry))


def write_export(path: Path, fmt: str, manifest: Manifest, items: Iterable[ExportedEntry]) -> None:
    """Write a JSONL file at ``path``, or a CSV export directory at ``path``."""
    if fmt == "jsonl":
        with path.open("wb") as out:
            out.writelines(jsonl_chunks(manifest, items))
    elif fmt == "csv":
        path.mkdir(parents=True, exist_ok=True)
        (path / MANIFEST_FILE).write_bytes(_line(manifest.to_json()))
        with (path / ENTRIES_FILE).open("wb") as out:
            out.writelines(csv_chunks(items))
    else:
        raise ValueError(f"unknown export format {fmt!r}; use jsonl or csv")


def _line(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def _json(text: str | bytes, what: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise VerificationError(f"{what} is not valid JSON") from exc


def _proof(value: object, what: str) -> list[bytes] | None:
    if value is None or value == "":
        return None
    items = value.split(" ") if isinstance(value, str) else value
    if not isinstance(items, list):
        raise VerificationError(f"{what} must be a list of base64 hashes")
    return [unb64(h, f"{what}[{i}]") for i, h in enumerate(items)]


def _index(value: object, what: str) -> int:
    # At most 20 digits (2**64 - 1): int() refuses longer digit strings than 4300 with a bare
    # ValueError, which escaped `broker audit verify` (found with the audit_export harness).
    if isinstance(value, str) and value.isdigit() and value.isascii() and len(value) <= 20:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise VerificationError(f"{what} is not a leaf index")
    return value


def _entry_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise VerificationError(f"{what} must be the entry's JSON text")
    return value.encode("utf-8", "surrogatepass")


def read_export(path: Path) -> tuple[Manifest, list[ExportedEntry]]:
    """Read a JSONL export file or a CSV export directory; VerificationError if malformed."""
    try:
        if path.is_dir():
            manifest = Manifest.from_json(_json((path / MANIFEST_FILE).read_bytes(), "manifest"))
            with (path / ENTRIES_FILE).open(encoding="utf-8", newline="") as handle:
                return manifest, _read_csv(handle)
        with path.open("rb") as handle:
            lines = handle.read().decode("utf-8").split("\n")
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise VerificationError(f"cannot read export {path}: {exc}") from exc
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise VerificationError("export file is empty")
    manifest = Manifest.from_json(_json(lines[0], "manifest line"))
    items = []
    for number, line in enumerate(lines[1:], start=2):
        obj = _json(line, f"line {number}")
        if not isinstance(obj, dict):
            raise VerificationError(f"line {number} is not an entry object")
        items.append(
            ExportedEntry(
                _index(obj.get("leaf_index"), f"line {number} leaf_index"),
                _entry_bytes(obj.get("entry"), f"line {number} entry"),
                _proof(obj.get("proof"), f"line {number} proof"),
            )
        )
    return manifest, items


def _read_csv(handle: Iterable[str]) -> list[ExportedEntry]:
    reader = csv.DictReader(handle)
    if reader.fieldnames is None or not {"leaf_index", "entry", "proof"} <= set(reader.fieldnames):
        raise VerificationError("entries.csv lacks the leaf_index, entry and proof columns")
    return [
        ExportedEntry(
            _index(row["leaf_index"], f"row {n} leaf_index"),
            _entry_bytes(row["entry"], f"row {n} entry"),
            _proof(row["proof"], f"row {n} proof"),
        )
        for n, row in enumerate(reader, start=2)
    ]


def build_receipts(store: AuditStore, engine: sa.Engine, flt: AuditFilter) -> list[dict[str, Any]]:
    """Receipts (entry, inclusion proof, signed checkpoint) for the entries ``flt`` selects.

    Typically ``AuditFilter(call_id=...)`` (a call's intent and outcome) or ``leaf_index=...``;
    NotFound if none is covered by the newest checkpoint yet.
    """
    main = _provable_checkpoint(store)
    flt = dataclasses.replace(flt, below_size=main.size)
    receipts = [
        receipt_json(main, item)
        for item in _with_proofs(store, iter_entries(engine, flt), main.size)
    ]
    if not receipts:
        raise NotFound("no such audit entry under the latest checkpoint (retry in a second)")
    return receipts


def receipt_json(checkpoint: StoredCheckpoint, item: ExportedEntry) -> dict[str, Any]:
    """The receipt file content of one exported entry."""
    return {
        "format": RECEIPT_FORMAT,
        "origin": checkpoint.note.split("\n", 1)[0],
        "leaf_index": item.leaf_index,
        "entry": item.entry.decode("utf-8", "replace"),
        "checkpoint": checkpoint.note,
        "proof": None if item.proof is None else [b64(h) for h in item.proof],
    }

"""Offline verification of exports and receipts: no database, no broker, only the log's key.

The auditor supplies the trusted log key (vkey); the vkey inside an export is only compared with
it. Every check that fails raises :class:`AuditVerificationError`, which names the first bad
leaf index when there is one. What is checked, in this order:

1. every checkpoint (the pinned one, the others listed, any the auditor saw before) carries a
   valid signature by the trusted key, for the log's origin: otherwise "bad signature" or
   "another log";
2. no two checkpoints for one size disagree on the root: otherwise a *fork*;
3. each older checkpoint is consistent with the pinned one (consistency proof, or, for a complete
   export, the root recomputed from the entries); a checkpoint larger than the export means the
   log was *truncated*, and the first missing index is named;
4. entries are in strictly increasing leaf order, below the checkpoint size and, for a complete
   export, without gaps (a *deleted* row is named by its missing index);
5. every entry is canonical and its inclusion proof leads to the checkpoint root (an *edited*
   entry, or *swapped* rows, fail here at the first index whose bytes moved);
6. for a complete export the root recomputed from all entries equals the checkpoint root.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from broker.audit.checkpoint import Checkpoint, open_checkpoint
from broker.audit.entry import parse_entry
from broker.audit.export import RECEIPT_FORMAT, ExportedEntry, Manifest, unb64
from broker.audit.merkle import (
    MerkleTree,
    VerificationError,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from broker.audit.note import Verifier


class AuditVerificationError(VerificationError):
    """The export or receipt does not verify; ``index`` is the first bad leaf, if known."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message if index is None else f"leaf {index}: {message}")
        self.index = index


@dataclass(frozen=True, slots=True)
class ExportReport:
    """What a successful verification established."""

    origin: str
    size: int
    root_hash: bytes
    entries: int
    complete: bool
    checkpoints: int


def _open(note: object, key: Verifier, what: str) -> Checkpoint:
    if not isinstance(note, str):
        raise AuditVerificationError(f"{what} is not a signed note")
    try:
        checkpoint, _ = open_checkpoint(note, [key], origin=key.name)
    except VerificationError as exc:
        raise AuditVerificationError(f"{what} does not verify with the log key: {exc}") from exc
    return checkpoint


def _check_forks(checkpoints: Iterable[Checkpoint]) -> None:
    roots: dict[int, bytes] = {}
    for cp in checkpoints:
        if roots.setdefault(cp.size, cp.root_hash) != cp.root_hash:
            raise AuditVerificationError(
                f"fork: two signed checkpoints for size {cp.size} have different roots"
            )


def verify_export(
    manifest: Manifest,
    entries: Sequence[ExportedEntry],
    log_key: Verifier,
    *,
    trusted_checkpoints: Sequence[str] = (),
) -> ExportReport:
    """Verify an export read by :func:`broker.audit.export.read_export` (see module docstring)."""
    if manifest.vkey != log_key.to_vkey():
        raise AuditVerificationError("the export was made by another log key than the one given")
    main = _open(manifest.checkpoint, log_key, "the export's checkpoint")
    if manifest.origin != main.origin:
        raise AuditVerificationError("the manifest's origin differs from its checkpoint's")
    others: list[tuple[Checkpoint, list[bytes] | None]] = []
    for n, item in enumerate(manifest.checkpoints):
        if not isinstance(item, Mapping):
            raise AuditVerificationError(f"checkpoint {n} of the manifest is malformed")
        proof = item.get("proof")
        hashes = None if proof is None else _hashes(proof, f"consistency proof {n}")
        others.append((_open(item.get("note"), log_key, f"checkpoint {n} of the manifest"), hashes))
    trusted = [
        _open(note, log_key, f"trusted checkpoint {n}")
        for n, note in enumerate(trusted_checkpoints)
    ]
    _check_forks([main, *(cp for cp, _ in others), *trusted])
    _check_entries(entries, main, manifest.complete)
    tree = _tree(entries) if manifest.complete else None
    for cp, proof in others:
        _check_older(cp, proof, main, tree)
    for cp in trusted:
        _check_older(cp, None, main, tree, always_proof=tree is None)
    return ExportReport(
        main.origin, main.size, main.root_hash, len(entries), manifest.complete, len(others) + 1
    )


def _hashes(value: object, what: str) -> list[bytes]:
    if not isinstance(value, list):
        raise AuditVerificationError(f"{what} must be a list of base64 hashes")
    return [unb64(h, f"{what}[{i}]") for i, h in enumerate(value)]


def _check_entries(entries: Sequence[ExportedEntry], main: Checkpoint, complete: bool) -> None:
    previous = -1
    for item in entries:
        index = item.leaf_index
        if index <= previous:
            raise AuditVerificationError("entries are out of order or repeated", index)
        if complete and index != previous + 1:
            raise AuditVerificationError("entry is missing (deleted row)", previous + 1)
        if index >= main.size:
            raise AuditVerificationError(f"entry is beyond the checkpoint size {main.size}", index)
        previous = index
    if complete and previous + 1 != main.size:
        raise AuditVerificationError(
            f"log truncated: the checkpoint commits to {main.size} entries", previous + 1
        )
    for item in entries:
        try:
            parse_entry(item.entry)
        except VerificationError as exc:
            raise AuditVerificationError(f"entry is malformed: {exc}", item.leaf_index) from exc
        if item.proof is None:
            raise AuditVerificationError("entry has no inclusion proof", item.leaf_index)
        try:
            verify_inclusion(
                leaf_hash(item.entry), item.leaf_index, main.size, item.proof, main.root_hash
            )
        except VerificationError as exc:
            raise AuditVerificationError(
                "entry is not the one the checkpoint commits to (edited, swapped or moved)",
                item.leaf_index,
            ) from exc


def _tree(entries: Sequence[ExportedEntry]) -> MerkleTree:
    return MerkleTree(leaf_hash(item.entry) for item in entries)


def _check_older(
    cp: Checkpoint,
    proof: list[bytes] | None,
    main: Checkpoint,
    tree: MerkleTree | None,
    *,
    always_proof: bool = False,
) -> None:
    if cp.size > main.size:
        raise AuditVerificationError(
            f"log truncated: a signed checkpoint commits to {cp.size} entries, "
            f"the export's only to {main.size}",
            main.size,
        )
    if cp.size == 0:
        return
    if tree is not None:
        if tree.root(cp.size) != cp.root_hash:
            raise AuditVerificationError(
                f"the entries do not produce the root of the checkpoint for size {cp.size}"
            )
        return
    if proof is None:
        if always_proof and cp.size != main.size:
            raise AuditVerificationError(
                f"no consistency proof from size {cp.size}: verify a complete export instead"
            )
        return
    try:
        verify_consistency(cp.size, main.size, proof, cp.root_hash, main.root_hash)
    except VerificationError as exc:
        raise AuditVerificationError(
            f"checkpoint for size {cp.size} is not consistent with size {main.size}: {exc}"
        ) from exc


@dataclass(frozen=True, slots=True)
class ReceiptReport:
    """A verified receipt: the log, the leaf and the checkpoint it was proven against."""

    origin: str
    leaf_index: int
    size: int
    call_id: str
    kind: str


def verify_receipt(receipt: object, log_key: Verifier) -> ReceiptReport:
    """Verify one receipt object (as written by ``broker audit prove``)."""
    if not isinstance(receipt, Mapping) or receipt.get("format") != RECEIPT_FORMAT:
        raise AuditVerificationError(f"not a {RECEIPT_FORMAT} receipt")
    data: Mapping[str, Any] = receipt
    if data.get("origin") != log_key.name:
        raise AuditVerificationError(
            f"the receipt is for log {data.get('origin')!r}, not {log_key.name!r}"
        )
    checkpoint = _open(data.get("checkpoint"), log_key, "the receipt's checkpoint")
    index, text = data.get("leaf_index"), data.get("entry")
    if isinstance(index, bool) or not isinstance(index, int) or not isinstance(text, str):
        raise AuditVerificationError("the receipt needs an integer leaf_index and entry text")
    entry = text.encode("utf-8", "surrogatepass")
    try:
        body = parse_entry(entry)
    except VerificationError as exc:
        raise AuditVerificationError(f"entry is malformed: {exc}", index) from exc
    proof = data.get("proof")
    if proof is None:
        raise AuditVerificationError("the receipt has no inclusion proof", index)
    try:
        verify_inclusion(
            leaf_hash(entry), index, checkpoint.size, _hashes(proof, "proof"), checkpoint.root_hash
        )
    except VerificationError as exc:
        raise AuditVerificationError(f"inclusion proof fails: {exc}", index) from exc
    return ReceiptReport(
        checkpoint.origin, index, checkpoint.size, str(body.get("call_id", "")), str(body["kind"])
    )

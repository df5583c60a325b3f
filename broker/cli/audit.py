"""``broker audit``: query and export the audit log, and verify it offline.

    broker audit query [filters] [--all] [--json]      entries from a running broker
    broker audit export --format jsonl|csv -o PATH     an export bundle for offline verification
    broker audit export --format ocsf|cef -o PATH|-    SIEM records, each naming its leaf
    broker audit tail [--follow] [--format F]          new entries as lines, for a log shipper
    broker audit prove --call-id X [-o FILE]           receipts (entry + proof + checkpoint)
    broker audit checkpoint [--vkey-out FILE]          the latest signed checkpoint and log key
    broker audit verify PATH --log-key VKEY            verify an export, no broker needed
    broker audit verify-receipt FILE --log-key VKEY [--leaf-hash HEX]
                                                       verify receipts, no broker needed

``verify`` and ``verify-receipt`` never contact the broker: they trust only the log key given
(a vkey string, or a file holding one). They print ``OK ...`` and exit 0, or print the first
problem (naming the leaf index when there is one) and exit 1. ``--leaf-hash`` (the hex hash a
SIEM record carries, see :mod:`broker.audit.siem`) also requires the receipt to prove that leaf.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from broker._proto.broker.v1 import audit_pb2, audit_pb2_grpc
from broker.audit.export import MANIFEST_FILE, read_export
from broker.audit.merkle import VerificationError, leaf_hash
from broker.audit.note import Verifier
from broker.audit.verify import verify_export, verify_receipt
from broker.cli.audit_tail import add_tail_arguments, run_tail
from broker.cli.common import add_client_arguments, channel_from_args, token_from_args

_FILTERS = (
    "tenant",
    "subject",
    "model",
    "vendor",
    "status",
    "action",
    "label",
    "call_id",
    "kind",
    "policy_revision",
)


def register(sub: Any) -> None:
    """Add ``audit query|export|checkpoint|prove|verify|verify-receipt``."""
    parser = sub.add_parser("audit", help="query, export and verify the audit log")
    actions = parser.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    query = actions.add_parser("query", help="entries matching filters (compliance, auditor)")
    _add_filters(query)
    query.add_argument("--page-size", type=int, default=100, help="entries per page")
    query.add_argument("--all", action="store_true", help="follow every page")
    query.add_argument("--json", action="store_true", help="print the entries as JSON lines")
    add_client_arguments(query)
    query.set_defaults(handler=run_query)

    export = actions.add_parser("export", help="write an export bundle for offline checks")
    _add_filters(export)
    export.add_argument(
        "--format",
        choices=["jsonl", "csv", "ocsf", "cef"],
        default="jsonl",
        help="jsonl/csv: bundles with proofs; ocsf/cef: SIEM records (one a line)",
    )
    export.add_argument(
        "-o", "--output", type=Path, required=True, help="file (- for stdout), or dir for csv"
    )
    add_client_arguments(export)
    export.set_defaults(handler=run_export)

    tail = actions.add_parser("tail", help="print entries as lines; --follow waits for more")
    _add_filters(tail)
    add_tail_arguments(tail)
    add_client_arguments(tail)
    tail.set_defaults(handler=lambda args: run_tail(args, _filter(args)))

    checkpoint = actions.add_parser(
        "checkpoint", help="the latest signed checkpoint and the log's public key (vkey)"
    )
    checkpoint.add_argument(
        "--vkey-out", type=Path, default=None, help="also write the vkey to this file"
    )
    add_client_arguments(checkpoint)
    checkpoint.set_defaults(handler=run_checkpoint)

    prove = actions.add_parser("prove", help="receipts proving a call's entries are logged")
    target = prove.add_mutually_exclusive_group(required=True)
    target.add_argument("--call-id", help="every entry of this call")
    target.add_argument("--leaf-index", type=int, help="one entry by position")
    prove.add_argument("-o", "--output", type=Path, default=None, help="file (default stdout)")
    add_client_arguments(prove)
    prove.set_defaults(handler=run_prove)

    verify = actions.add_parser("verify", help="verify an export offline")
    verify.add_argument("path", type=Path, help="export file (jsonl) or directory (csv)")
    verify.add_argument("--log-key", required=True, help="trusted vkey, or a file holding it")
    verify.add_argument(
        "--checkpoint",
        type=Path,
        action="append",
        default=[],
        help="a signed checkpoint seen before (repeatable): catches forks and truncation",
    )
    verify.set_defaults(handler=run_verify)

    receipt = actions.add_parser("verify-receipt", help="verify receipts offline")
    receipt.add_argument("file", type=Path, help="receipt JSON or JSON lines")
    receipt.add_argument("--log-key", required=True, help="trusted vkey, or a file holding it")
    receipt.add_argument(
        "--leaf-hash",
        default=None,
        help="hex leaf hash from a SIEM record: the receipt must prove exactly that leaf",
    )
    receipt.set_defaults(handler=run_verify_receipt)


def _add_filters(parser: argparse.ArgumentParser) -> None:
    for name in _FILTERS:
        parser.add_argument(f"--{name.replace('_', '-')}", default="", help=f"only this {name}")
    parser.add_argument("--since", default="", help="ISO 8601 time, inclusive")
    parser.add_argument("--until", default="", help="ISO 8601 time, exclusive")
    parser.add_argument(
        "--without-outcome",
        action="store_true",
        help="only call intents with no outcome entry: calls in flight, or whose result is "
        "unknown because their serving process stopped or died",
    )


def _time_us(text: str) -> int:
    if not text:
        return 0
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time") from None
    return int(moment.timestamp() * 1_000_000)


def _filter(args: argparse.Namespace) -> audit_pb2.AuditFilter:
    values = {name: getattr(args, name) for name in _FILTERS}
    return audit_pb2.AuditFilter(
        **values,
        time_from_us=_time_us(args.since),
        time_to_us=_time_us(args.until),
        without_outcome=args.without_outcome,
    )


@contextmanager
def _stub(args: argparse.Namespace) -> Iterator[tuple[audit_pb2_grpc.AuditStub, Any]]:
    token = token_from_args(args)
    channel = channel_from_args(args)
    try:
        yield audit_pb2_grpc.AuditStub(channel), (("authorization", f"Bearer {token}"),)
    finally:
        channel.close()


def run_query(args: argparse.Namespace) -> int:
    """Print matching entries: a table, or JSON lines with --json."""
    token = ""
    with _stub(args) as (stub, metadata):
        while True:
            request = audit_pb2.QueryEntriesRequest(
                filter=_filter(args), page_size=args.page_size, page_token=token
            )
            token = ""
            for entry in stub.QueryEntries(request, timeout=args.timeout, metadata=metadata):
                if args.json:
                    sys.stdout.write(entry.entry.decode("utf-8", "replace") + "\n")
                else:
                    when = datetime.fromtimestamp(entry.time_us / 1e6).isoformat()
                    print(
                        f"{entry.leaf_index}\t{when}\t{entry.kind}\t{entry.tenant}\t"
                        f"{entry.subject}\t{entry.model}\t{entry.status or '-'}\t{entry.call_id}"
                    )
                token = entry.next_page_token or token
            if not (args.all and token):
                return 0


def run_export(args: argparse.Namespace) -> int:
    """Write the bundle: a JSONL file, or a directory with manifest.json and entries.csv."""
    request = audit_pb2.ExportRequest(filter=_filter(args), format=args.format)
    path: Path = args.output
    if str(path) == "-":
        if args.format == "csv":
            raise ValueError("a csv export is a directory; give -o DIR")
        with _stub(args) as (stub, metadata):
            for chunk in stub.Export(request, timeout=args.timeout, metadata=metadata):
                sys.stdout.buffer.write(chunk.data)
        sys.stdout.buffer.flush()
        return 0
    if args.format == "csv":
        path.mkdir(parents=True, exist_ok=True)
        data_path = path / "entries.csv"
    else:
        data_path = path
    with _stub(args) as (stub, metadata), data_path.open("wb") as out:
        for chunk in stub.Export(request, timeout=args.timeout, metadata=metadata):
            if chunk.manifest_json and args.format == "csv":
                (path / MANIFEST_FILE).write_text(chunk.manifest_json + "\n", encoding="utf-8")
            out.write(chunk.data)
    print(f"wrote {path} ({args.format})")
    return 0


def run_prove(args: argparse.Namespace) -> int:
    """Fetch receipts and write them as JSON lines."""
    if args.call_id is not None:
        request = audit_pb2.GetInclusionProofRequest(call_id=args.call_id)
    else:
        request = audit_pb2.GetInclusionProofRequest(leaf_index=args.leaf_index)
    with _stub(args) as (stub, metadata):
        response = stub.GetInclusionProof(request, timeout=args.timeout, metadata=metadata)
    text = "".join(proof.receipt_json + "\n" for proof in response.proofs)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {len(response.proofs)} receipt(s) to {args.output}")
    return 0


def run_checkpoint(args: argparse.Namespace) -> int:
    """Print the latest signed checkpoint and the vkey that verifies it.

    The vkey printed here comes from the broker itself: an auditor who does not trust the
    operator pins it once (from the deployment record) and compares it with what is printed.
    """
    with _stub(args) as (stub, metadata):
        reply = stub.GetCheckpoint(
            audit_pb2.GetCheckpointRequest(), timeout=args.timeout, metadata=metadata
        )
    print(f"vkey: {reply.vkey}")
    print(f"tree size: {reply.tree_size}")
    sys.stdout.write(reply.checkpoint)
    if args.vkey_out is not None:
        args.vkey_out.write_text(reply.vkey + "\n", encoding="utf-8")
    return 0


def load_log_key(text: str) -> Verifier:
    """A vkey given inline or in a file; VerificationError if it is not one."""
    candidate = Path(text)
    if "+" not in text or candidate.is_file():
        try:
            text = candidate.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise VerificationError(
                f"--log-key is neither a vkey nor a readable file: {exc}"
            ) from exc
    return Verifier.from_vkey(text)


def run_verify(args: argparse.Namespace) -> int:
    """Verify an export offline."""
    try:
        key = load_log_key(args.log_key)
        trusted = [p.read_text(encoding="utf-8") for p in args.checkpoint]
        manifest, items = read_export(args.path)
        report = verify_export(manifest, items, key, trusted_checkpoints=trusted)
    except (VerificationError, OSError, UnicodeDecodeError) as exc:
        print(f"INVALID: {exc}", file=sys.stderr)
        return 1
    kind = "complete log" if report.complete else "filtered export"
    print(
        f"OK {kind}: {report.entries} entries verified against the signed checkpoint of "
        f"{report.origin} at size {report.size} ({report.checkpoints} checkpoint(s) consistent)"
    )
    return 0


def run_verify_receipt(args: argparse.Namespace) -> int:
    """Verify every receipt in the file offline."""
    try:
        key = load_log_key(args.log_key)
        receipts = _read_receipts(args.file)
        reports = [verify_receipt(r, key) for r in receipts]
        if args.leaf_hash is not None:
            _match_leaf_hash(args.leaf_hash, receipts)
    except (VerificationError, OSError, UnicodeDecodeError) as exc:
        print(f"INVALID: {exc}", file=sys.stderr)
        return 1
    for report in reports:
        print(
            f"OK leaf {report.leaf_index} ({report.kind}, call {report.call_id or '-'}) is in "
            f"{report.origin} at size {report.size}"
        )
    return 0


def _match_leaf_hash(expected: str, receipts: list[Any]) -> None:
    """The receipts (already verified) must include the leaf whose hash a SIEM record names."""
    wanted = expected.strip().lower()
    if len(wanted) != 64 or any(c not in "0123456789abcdef" for c in wanted):
        raise VerificationError("--leaf-hash must be 64 hex digits (SHA-256)")
    hashes = {leaf_hash(str(r["entry"]).encode("utf-8", "surrogatepass")).hex() for r in receipts}
    if wanted not in hashes:
        raise VerificationError(
            f"no receipt proves the leaf hash {wanted[:16]}...: the SIEM record names another entry"
        )


def _read_receipts(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    # RecursionError: json nests recursively, so deeply nested text is refused like bad JSON
    # (it escaped as a traceback; found with the audit_receipt fuzz harness).
    try:
        whole = json.loads(text)
    except (ValueError, RecursionError):
        whole = None
    if whole is not None:
        items = whole if isinstance(whole, list) else [whole]
    else:
        try:
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        except (ValueError, RecursionError) as exc:
            raise VerificationError(f"{path} is neither a JSON receipt nor JSON lines") from exc
    if not items:  # nothing verified must never read as "valid"
        raise VerificationError(f"{path} holds no receipt")
    return items

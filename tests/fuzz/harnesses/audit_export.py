"""An export bundle for ``broker audit verify``: a JSONL file, or a CSV directory
(``manifest.json`` and ``entries.csv``), verified against the fuzz log's key.

The first byte picks the form; for CSV the rest is ``<manifest.json>\\x00<entries.csv>``.
``read_export`` and ``verify_export`` must turn anything malformed into ``VerificationError``
(what the command reports as INVALID); a bundle that verifies must say so consistently.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tests.fuzz.harnesses._support import instrumented, main

with instrumented():
    from broker.audit.export import ENTRIES_FILE, MANIFEST_FILE, read_export
    from broker.audit.merkle import VerificationError
    from broker.audit.verify import verify_export
    from tests.fuzz.harnesses._audit import FUZZ_KEY, FUZZ_ORIGIN

#: ``export.py``: "Reading is strict: anything malformed raises VerificationError".
EXPECTED = (VerificationError,)

_DIR = Path(tempfile.mkdtemp(prefix="fuzz-export-"))
_JSONL = _DIR / "export.jsonl"
_CSV = _DIR / "csv"
_CSV.mkdir()


def fuzz_one(data: bytes) -> None:
    """Write the bundle, read it back and verify it."""
    if not data:
        return
    if data[0] % 2 == 0:
        _JSONL.write_bytes(data[1:])
        path = _JSONL
    else:
        manifest, _, entries = data[1:].partition(b"\x00")
        (_CSV / MANIFEST_FILE).write_bytes(manifest)
        (_CSV / ENTRIES_FILE).write_bytes(entries)
        path = _CSV
    try:
        manifest_obj, items = read_export(path)
        report = verify_export(manifest_obj, items, FUZZ_KEY)
    except EXPECTED:
        return
    assert report.origin == FUZZ_ORIGIN and report.entries == len(items)
    assert report.entries <= report.size
    if report.complete:
        assert report.entries == report.size


if __name__ == "__main__":
    main(fuzz_one)

"""A receipts file for ``broker audit verify-receipt``: one JSON receipt, a JSON list of them,
or JSON lines; each verified against the fuzz log's key.

Read as the command reads it (``_read_receipts`` on a file), so what a file can make escape
here is what could crash the command. The command reports ``VerificationError`` (a receipt
that does not verify, or a file that holds none) and ``UnicodeDecodeError`` (a file that is
not UTF-8) as ``INVALID``; anything else would be a traceback.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tests.fuzz.harnesses._support import instrumented, main

with instrumented():
    from broker.audit.merkle import VerificationError
    from broker.audit.verify import verify_receipt
    from broker.cli.audit import _read_receipts
    from tests.fuzz.harnesses._audit import FUZZ_KEY, FUZZ_ORIGIN

#: What ``run_verify_receipt`` catches and reports as INVALID (``OSError`` cannot occur here).
EXPECTED = (VerificationError, UnicodeDecodeError)

_FILE = Path(tempfile.mkdtemp(prefix="fuzz-receipt-")) / "receipts.jsonl"


def fuzz_one(data: bytes) -> None:
    """Read the file and verify every receipt in it."""
    _FILE.write_bytes(data)
    try:
        for receipt in _read_receipts(_FILE):
            report = verify_receipt(receipt, FUZZ_KEY)
            assert report.origin == FUZZ_ORIGIN and 0 <= report.leaf_index < report.size
    except EXPECTED:
        return


if __name__ == "__main__":
    main(fuzz_one)

"""Checkpoints (c2sp.org/tlog-checkpoint): the bare body, and signed as the verifier gets them.

The first byte picks: a checkpoint body (``Checkpoint.from_text``; what it accepts must print
back byte for byte, since its signature covers those bytes), or a signed checkpoint opened
with the go.sum log's key and origin (public vectors) or with the fuzz log's.
"""

from __future__ import annotations

from tests.fuzz.harnesses._support import instrumented, main

with instrumented():
    from broker.audit.checkpoint import Checkpoint, open_checkpoint
    from broker.audit.merkle import VerificationError
    from tests.fuzz.harnesses._audit import FUZZ_KEY, FUZZ_ORIGIN, SUMDB_KEY, SUMDB_ORIGIN

#: The audit layer's one error for untrusted input.
EXPECTED = (VerificationError,)


def fuzz_one(data: bytes) -> None:
    """Parse one body, or open one signed checkpoint."""
    if not data:
        return
    mode, rest = data[0] % 3, data[1:]
    try:
        if mode == 0:
            text = rest.decode("utf-8", "surrogateescape")
            assert Checkpoint.from_text(text).to_text() == text
        elif mode == 1:
            checkpoint, names = open_checkpoint(rest, [SUMDB_KEY], origin=SUMDB_ORIGIN)
            assert names == (SUMDB_KEY.name,) and checkpoint.origin == SUMDB_ORIGIN
        else:
            checkpoint, names = open_checkpoint(rest, [FUZZ_KEY], origin=FUZZ_ORIGIN)
            assert names == (FUZZ_KEY.name,)
    except EXPECTED:
        return


if __name__ == "__main__":
    main(fuzz_one)

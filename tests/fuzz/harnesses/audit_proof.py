"""Merkle inclusion and consistency proofs (RFC 9162), with every argument from the input.

Layout: one mode byte (even: inclusion, odd: consistency), two 8-byte big-endian integers (leaf
index and tree size, or the two tree sizes), two 32-byte hashes (leaf hash and root, or the two
roots), then the proof as 32-byte hashes (a shorter tail is one short hash, which must be
refused). Seeds are the transparency-dev probes, happy and mutated.
"""

from __future__ import annotations

from tests.fuzz.harnesses._support import instrumented, main

with instrumented():
    from broker.audit.merkle import VerificationError, verify_consistency, verify_inclusion

#: ``merkle.py``: every ``verify_*`` raises ``VerificationError``, for malformed arguments too.
EXPECTED = (VerificationError,)

_HEAD = 1 + 8 + 8 + 32 + 32


def fuzz_one(data: bytes) -> None:
    """Verify one proof."""
    if len(data) < _HEAD:
        return
    mode = data[0]
    a = int.from_bytes(data[1:9], "big")
    b = int.from_bytes(data[9:17], "big")
    h1, h2 = data[17:49], data[49:81]
    tail = data[_HEAD:]
    proof = [tail[i : i + 32] for i in range(0, len(tail), 32)]
    try:
        if mode % 2 == 0:
            verify_inclusion(h1, a, b, proof, h2)
            assert a < b
        else:
            verify_consistency(a, b, proof, h1, h2)
            assert 0 < a <= b
            if a == b:
                assert h1 == h2 and not proof
    except EXPECTED:
        return


if __name__ == "__main__":
    main(fuzz_one)

"""C2SP signed notes and note keys, as the offline verifier reads them from files and flags.

The first byte picks what the rest is: a signed note (opened against every public vector key
and the fuzz log key), a verifier key (``--log-key``), or a signer key. Text arrives as a
command-line argument would (``surrogateescape``) or as bytes (notes). Everything malformed
must be the one ``VerificationError``; an accepted key must survive ``to_vkey`` unchanged.
"""

from __future__ import annotations

from tests.fuzz.harnesses._support import instrumented, main

with instrumented():
    from broker.audit.merkle import VerificationError
    from broker.audit.note import Signer, Verifier, open_note
    from tests.fuzz.harnesses._audit import VECTOR_KEYS

#: ``note.py``: "Everything from untrusted input fails with the one VerificationError".
EXPECTED = (VerificationError,)


def fuzz_one(data: bytes) -> None:
    """Open one note, or parse one key."""
    if not data:
        return
    mode, rest = data[0] % 3, data[1:]
    text = rest.decode("utf-8", "surrogateescape")
    try:
        if mode == 0:
            body, names = open_note(rest, VECTOR_KEYS)
            assert names and body.endswith("\n")
            assert set(names) <= {key.name for key in VECTOR_KEYS}
        elif mode == 1:
            key = Verifier.from_vkey(text)
            assert key.to_vkey() == text
        else:
            signer = Signer.from_skey(text)
            assert signer.to_skey() == text
    except EXPECTED:
        return


if __name__ == "__main__":
    main(fuzz_one)

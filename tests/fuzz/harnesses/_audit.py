"""Keys the audit harnesses verify with: the public vector keys, and one test log key.

``FUZZ_SKEY`` is a throwaway Ed25519 key made for these harnesses (it signs the seed receipts
and exports in ``corpus/``, made by ``python -m tests.fuzz.make_seeds``); it guards nothing.
The vector keys are those of ``shared/vectors/transparency-log/signed_note_vectors.json``
(C2SP, golang.org/x/mod sumdb, transparency-dev formats), whose notes are seeds too.
"""

from __future__ import annotations

from broker.audit.note import Signer, Verifier

FUZZ_ORIGIN = "fuzz.example/audit"
FUZZ_SKEY = "PRIVATE+KEY+fuzz.example/audit+ff7363f4+ARhDQe2nKzTTm0h4hyWvt+Cl/PlnUGE+giSpfeCq0Vs1"
FUZZ_SIGNER = Signer.from_skey(FUZZ_SKEY)
FUZZ_KEY = FUZZ_SIGNER.verifier()

SUMDB_ORIGIN = "go.sum database tree"
SUMDB_KEY = Verifier.from_vkey(
    "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
)

VECTOR_KEYS = (
    FUZZ_KEY,
    SUMDB_KEY,
    *(
        Verifier.from_vkey(vkey)
        for vkey in (
            "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop",
            "monkeys+db4d9f7e+AULaJMvTtDLHPUcUrjdDad9vDlh/PTfC2VV60JUtCfWT",
            "bananas+cf639f13+AaPjhFnPCQnid/Ql32KWhmh+uk72FVRfK+2DLmO3BI3M",
            "witness+f13a86db+AdYV1Ztajd9BvyjP2HgpwrqYL6TjOwIjGMOq8Bu42xbN",
            "Known+fdd35892+BHAQ0T7lbwuY4ABJ9/MYY9bWV3hmSyOGVt2x42NkmdUH",
        )
    ),
)

"""``authorization`` metadata -> ``TokenVerifier.authenticate``: bearer scheme, JWT header and
claims (read before any signature is checked), issuer and key choice, PyJWT, time claims.

Two issuers are trusted: an HS256 one (secret from the environment) and an EdDSA one with a
public key file and a required ``typ``; tokens are checked at a fixed time. The first byte says
whether the metadata value arrives as ``str`` (gRPC's text metadata) or ``bytes``. Every
refusal must be ``Unauthenticated``; an accepted token must name a trusted issuer.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.fuzz.harnesses._support import instrumented, main

with instrumented():
    from broker.auth.tokens import TokenVerifier
    from broker.config import AuthConfig, IssuerConfig
    from broker.errors import Unauthenticated

#: ``tokens.py``: every refusal is ``Unauthenticated`` (one public message, reason in the log).
EXPECTED = (Unauthenticated,)

NOW = 1_750_000_000.0
HS_ISSUER, HS_SECRET = "https://idp.example.com", "fuzz-secret-" + "s" * 32
ED_ISSUER = "https://ed.example.com"
ED_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))  # test key, guards nothing

_DIR = Path(tempfile.mkdtemp(prefix="fuzz-jwt-"))
(_DIR / "ed.pem").write_bytes(
    ED_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
)
VERIFIER = TokenVerifier(
    AuthConfig(
        issuers=[
            IssuerConfig(
                issuer=HS_ISSUER,
                audience="model-broker",
                algorithms=["HS256"],
                hs256_secret_env="FUZZ_HS_SECRET",
            ),
            IssuerConfig(
                issuer=ED_ISSUER,
                audience="model-broker",
                algorithms=["EdDSA"],
                public_key_files={"ed-1": _DIR / "ed.pem"},
                typ="at+jwt",
            ),
        ],
        cache_size=0,  # every input verified afresh: libFuzzer wants no state between inputs
    ),
    environ={"FUZZ_HS_SECRET": HS_SECRET},
    clock=lambda: NOW,
)


def fuzz_one(data: bytes) -> None:
    """Authenticate one metadata value."""
    if not data:
        return
    raw = data[1:]
    value: str | bytes = raw if data[0] % 2 else raw.decode("utf-8", "surrogateescape")
    try:
        principal = VERIFIER.authenticate([("authorization", value)], now=NOW)
    except EXPECTED:
        return
    assert principal.issuer in (HS_ISSUER, ED_ISSUER)
    assert principal.expires_at > NOW - 300


if __name__ == "__main__":
    main(fuzz_one)

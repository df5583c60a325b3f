"""Key material and a token factory shared by the auth tests.

Keys are generated once per session (RSA generation is the slow part); files are written per
test under ``tmp_path`` so that each test builds its own configuration.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from broker.config import AuthConfig, IssuerConfig

NOW = 1_750_000_000.0
ISSUER = "https://idp.example.com"
AUDIENCE = "model-broker"
HS_SECRET = "s" * 40

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class Keys:
    """One private key of each supported kind."""

    rsa: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey
    ed: ed25519.Ed25519PrivateKey


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys(
        rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec=ec.generate_private_key(ec.SECP256R1()),
        ed=ed25519.Ed25519PrivateKey.generate(),
    )


def public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_jwk(key: PrivateKey, kid: str) -> dict[str, Any]:
    algorithm: Any
    if isinstance(key, rsa.RSAPrivateKey):
        algorithm = jwt.algorithms.RSAAlgorithm
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        algorithm = jwt.algorithms.ECAlgorithm
    else:
        algorithm = jwt.algorithms.OKPAlgorithm
    jwk: dict[str, Any] = algorithm.to_jwk(key.public_key(), as_dict=True)
    jwk["kid"] = kid
    return jwk


def claims(**overrides: Any) -> dict[str, Any]:
    """A valid claim set at ``NOW``; an override of ``None`` removes the claim."""
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "svc-1",
        "tenant": "bank",
        "roles": ["buyer"],
        "iat": int(NOW),
        "nbf": int(NOW),
        "exp": int(NOW) + 600,
    }
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def sign(
    key: PrivateKey | str | bytes,
    algorithm: str,
    *,
    kid: str | None = None,
    headers: dict[str, Any] | None = None,
    **overrides: Any,
) -> str:
    all_headers = dict(headers or {})
    if kid is not None:
        all_headers["kid"] = kid
    return jwt.encode(claims(**overrides), key, algorithm=algorithm, headers=all_headers)


@pytest.fixture
def jwks_file(tmp_path: Path, keys: Keys) -> Path:
    path = tmp_path / "jwks.json"
    document = {
        "keys": [
            public_jwk(keys.rsa, "rsa-1"),
            public_jwk(keys.ec, "ec-1"),
            public_jwk(keys.ed, "ed-1"),
        ]
    }
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


@pytest.fixture
def pem_files(tmp_path: Path, keys: Keys) -> dict[str, Path]:
    files = {}
    for kid, key in (("rsa-pem", keys.rsa), ("ec-pem", keys.ec), ("ed-pem", keys.ed)):
        path = tmp_path / f"{kid}.pem"
        path.write_bytes(public_pem(key))
        files[kid] = path
    return files


MakeAuth = Callable[..., AuthConfig]


@pytest.fixture
def make_auth() -> MakeAuth:
    """An AuthConfig with one issuer built from keyword arguments of IssuerConfig."""

    def build(*, auth: dict[str, Any] | None = None, **issuer: Any) -> AuthConfig:
        fields: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, **issuer}
        return AuthConfig(issuers=[IssuerConfig(**fields)], **(auth or {}))

    return build

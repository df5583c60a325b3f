"""Key loading: every source works, and every unsafe configuration is a ConfigError."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa

from broker.auth.keys import load_issuer
from broker.auth.tokens import TokenVerifier
from broker.config import AuthConfig, ConfigError, DevIssuerConfig, IssuerConfig
from tests.unit.auth.conftest import AUDIENCE, HS_SECRET, ISSUER, Keys, public_jwk, public_pem


def issuer(**fields: Any) -> IssuerConfig:
    return IssuerConfig(**{"issuer": ISSUER, "audience": AUDIENCE, **fields})


def write_jwks(path: Path, *jwks: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"keys": list(jwks)}), encoding="utf-8")
    return path


def test_jwks_keys_are_bound_to_their_algorithm(jwks_file: Path) -> None:
    loaded = load_issuer(issuer(algorithms=["RS256", "ES256", "EdDSA"], jwks_file=jwks_file))
    assert {(key.kid, key.algorithm) for key in loaded.keys} == {
        ("rsa-1", "RS256"),
        ("ec-1", "ES256"),
        ("ed-1", "EdDSA"),
    }


def test_secret_is_not_in_repr(tmp_path: Path) -> None:
    loaded = load_issuer(issuer(algorithms=["HS256"], hs256_secret_env="S"), {"S": HS_SECRET})
    assert HS_SECRET not in repr(loaded)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"algorithms": ["RS256"], "jwks_file": "jwks"}, "is a ES256 key"),
        ({"algorithms": ["RS256", "HS256"], "jwks_file": "jwks"}, "HS256 is allowed only"),
        (
            {"algorithms": ["HS256"], "hs256_secret_env": "S", "jwks_file": "jwks"},
            "cannot be combined with public keys",
        ),
        ({"algorithms": ["HS256", "RS256"], "hs256_secret_env": "S"}, "may allow only HS256"),
        ({"algorithms": ["EdDSA"]}, "has no keys"),
        ({"algorithms": ["HS256"], "hs256_secret_env": "MISSING"}, "MISSING is not set"),
        ({"algorithms": ["HS256"], "hs256_secret_env": "SHORT"}, "at least 32 bytes"),
        (
            {"algorithms": ["HS256"], "hs256_secret_env": "S", "hs256_secret_file": "x"},
            "not both",
        ),
        (
            {"algorithms": ["RS256", "ES256", "EdDSA"], "jwks_file": "missing.json"},
            "cannot be read",
        ),
        ({"algorithms": ["EdDSA"], "public_key_files": {"k": "missing.pem"}}, "cannot be read"),
    ],
)
def test_config_errors_name_the_issuer(
    jwks_file: Path, tmp_path: Path, fields: dict[str, Any], message: str
) -> None:
    fields = {
        name: (
            jwks_file
            if value == "jwks"
            else tmp_path / value
            if name in {"jwks_file", "hs256_secret_file"}
            else value
        )
        for name, value in fields.items()
    }
    if "public_key_files" in fields:
        fields["public_key_files"] = {
            k: tmp_path / v for k, v in fields["public_key_files"].items()
        }
    with pytest.raises(ConfigError, match=message) as info:
        load_issuer(issuer(**fields), {"S": HS_SECRET, "SHORT": "short"})
    assert ISSUER in str(info.value)
    assert HS_SECRET not in str(info.value)


def test_allowed_algorithm_without_a_key(tmp_path: Path, keys: Keys) -> None:
    jwks = write_jwks(tmp_path / "j.json", public_jwk(keys.ed, "ed"))
    with pytest.raises(ConfigError, match="no key for allowed algorithm RS256"):
        load_issuer(issuer(algorithms=["EdDSA", "RS256"], jwks_file=jwks))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda jwk: jwk.update(d="AAAA"), "private or symmetric key material"),
        (lambda jwk: jwk.update(kty="oct", k="AAAA"), "private or symmetric key material"),
        (lambda jwk: jwk.update(use="enc"), "not a signature key"),
        (lambda jwk: jwk.update(alg="RS512"), "declares alg 'RS512'"),
        (lambda jwk: jwk.update(kty="XYZ"), "unsupported kty"),
        (lambda jwk: jwk.update(n="!!!"), "not a valid RSA key"),
        (lambda jwk: jwk.update(kid=7), "kid that is not a non-empty string"),
    ],
)
def test_bad_jwks_entries(tmp_path: Path, keys: Keys, mutate: Any, message: str) -> None:
    jwk = public_jwk(keys.rsa, "rsa")
    mutate(jwk)
    jwks = write_jwks(tmp_path / "j.json", jwk)
    with pytest.raises(ConfigError, match=message) as info:
        load_issuer(issuer(algorithms=["RS256"], jwks_file=jwks))
    assert "AAAA" not in str(info.value)


@pytest.mark.parametrize(
    "document", ["not json", "[]", '{"keys": {}}', '{"keys": []}', '{"keys": [1]}']
)
def test_malformed_jwks_file(tmp_path: Path, document: str) -> None:
    path = tmp_path / "j.json"
    path.write_text(document)
    with pytest.raises(ConfigError, match="JWKS file"):
        load_issuer(issuer(algorithms=["RS256"], jwks_file=path))


def test_duplicate_and_missing_kids(tmp_path: Path, keys: Keys) -> None:
    twice = write_jwks(tmp_path / "a.json", public_jwk(keys.ed, "k"), public_jwk(keys.ed, "k"))
    with pytest.raises(ConfigError, match="duplicate kid k"):
        load_issuer(issuer(algorithms=["EdDSA"], jwks_file=twice))
    anonymous = public_jwk(keys.ed, "x")
    del anonymous["kid"]
    mixed = write_jwks(tmp_path / "b.json", anonymous, public_jwk(keys.ed, "y"))
    with pytest.raises(ConfigError, match="every key needs a kid"):
        load_issuer(issuer(algorithms=["EdDSA"], jwks_file=mixed))


@pytest.mark.parametrize(
    ("make_key", "message"),
    [
        (lambda: rsa.generate_private_key(65537, 1024), "1024 bits"),
        (lambda: ec.generate_private_key(ec.SECP384R1()), "curve P-256"),
        (ed448.Ed448PrivateKey.generate, "Ed448PublicKey"),
    ],
)
def test_weak_or_unsupported_pem_keys(tmp_path: Path, make_key: Any, message: str) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(public_pem(make_key()))
    with pytest.raises(ConfigError, match=message):
        load_issuer(issuer(algorithms=["RS256"], public_key_files={"k": path}))


def test_private_pem_is_refused(tmp_path: Path, keys: Keys) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(
        keys.ed.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_issuer(issuer(algorithms=["EdDSA"], public_key_files={"k": path}))


def test_issuer_configured_twice(tmp_path: Path, pem_files: dict[str, Path]) -> None:
    one = issuer(algorithms=["EdDSA"], public_key_files={"ed": pem_files["ed-pem"]})
    with pytest.raises(ConfigError, match="more than once"):
        TokenVerifier(AuthConfig(issuers=[one, one]))
    dev = DevIssuerConfig(enabled=True, issuer=ISSUER)
    with pytest.raises(ConfigError, match="more than once"):
        TokenVerifier(AuthConfig(issuers=[one], dev_issuer=dev), data_dir=tmp_path)

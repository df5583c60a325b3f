"""Issuer keys: load them once at start-up and refuse any configuration that could be abused.

Each trusted issuer gets a :class:`TrustedIssuer` holding its verification keys. Every key is
bound to exactly one JWS algorithm, derived from the key's type (RSA -> RS256, EC P-256 -> ES256,
OKP Ed25519 -> EdDSA, shared secret -> HS256). The verifier only uses a key for a token whose
``alg`` equals the key's algorithm, which is what makes algorithm confusion (an HS256 token
"signed" with an RSA public key as the secret) impossible by construction, not merely by
PyJWT's own checks.

Rules enforced here, each a :class:`~broker.config.ConfigError` naming the issuer:

- a key's type must fit the issuer's ``algorithms`` allow-list, and every allowed algorithm
  must have at least one key (an allow-list entry with no key is a typo waiting to bite);
- HS256 only for an issuer with a secret, and a secret never together with public keys;
- no private key material in a JWKS file, no symmetric (``oct``) keys in a JWKS file;
- RSA keys of at least 2048 bits, HS256 secrets of at least 32 bytes (RFC 7518 section 3.2);
- key ids are unique per issuer, and a key without a ``kid`` is only allowed as the only key.

Error messages name the issuer, the file and the kid, never key material: PyJWT's own key
errors can quote the whole JWK (private parts included), so they are not passed on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from broker.config import ConfigError, IssuerConfig

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

MIN_RSA_BITS: Final = 2048
MIN_HS256_SECRET_BYTES: Final = 32
_PRIVATE_JWK_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_JWK_LOADERS: Final[dict[str, Callable[[dict[str, Any]], Any]]] = {
    "RSA": RSAAlgorithm.from_jwk,
    "EC": ECAlgorithm.from_jwk,
    "OKP": OKPAlgorithm.from_jwk,
}


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One key and the single algorithm it may verify. ``key`` is hidden from ``repr``."""

    kid: str | None
    algorithm: str
    key: PublicKey | bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class TrustedIssuer:
    """An issuer the broker trusts: its name, audience, allow-list, keys and required ``typ``."""

    issuer: str
    audience: str
    algorithms: frozenset[str]
    keys: tuple[VerificationKey, ...]
    typ: str | None = None

    def key_for(self, kid: str | None) -> VerificationKey | None:
        """The key a token's ``kid`` selects; with no ``kid``, the only key (if there is one)."""
        if kid is None:
            return self.keys[0] if len(self.keys) == 1 else None
        for key in self.keys:
            if key.kid == kid:
                return key
        return None


def algorithm_for(key: PublicKey) -> str:
    """The one JWS algorithm a public key may verify, or ValueError for unsupported keys."""
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise ValueError(f"unsupported key type {type(key).__name__}")


def load_issuer(config: IssuerConfig, environ: Mapping[str, str] | None = None) -> TrustedIssuer:
    """Load and check every key of one configured issuer.

    ``environ`` defaults to ``os.environ``; tests pass their own to supply an HS256 secret.
    """
    name = config.issuer
    has_secret = config.hs256_secret_file is not None or config.hs256_secret_env is not None
    has_public = config.jwks_file is not None or bool(config.public_key_files)
    if config.hs256_secret_file is not None and config.hs256_secret_env is not None:
        raise ConfigError(f"issuer {name!r}: set hs256_secret_file or hs256_secret_env, not both")
    if has_secret and has_public:
        raise ConfigError(
            f"issuer {name!r}: an HS256 secret cannot be combined with public keys; "
            "configure a separate issuer"
        )
    if "HS256" in config.algorithms and not has_secret:
        raise ConfigError(f"issuer {name!r}: HS256 is allowed only for an issuer with a secret")
    if has_secret and set(config.algorithms) != {"HS256"}:
        raise ConfigError(f"issuer {name!r}: an issuer with a secret may allow only HS256")

    keys: list[VerificationKey] = []
    if has_secret:
        keys.append(VerificationKey(None, "HS256", _load_secret(config, environ)))
    if config.jwks_file is not None:
        keys.extend(_load_jwks(name, config.jwks_file))
    for kid, path in sorted(config.public_key_files.items()):
        keys.append(_load_pem(name, kid, path))
    return trusted_issuer(
        issuer=name,
        audience=config.audience,
        algorithms=frozenset(config.algorithms),
        keys=keys,
        typ=config.typ,
    )


def trusted_issuer(
    *,
    issuer: str,
    audience: str,
    algorithms: frozenset[str],
    keys: list[VerificationKey],
    typ: str | None = None,
) -> TrustedIssuer:
    """Check a set of keys against an allow-list and build the issuer (also used by the dev one)."""
    if not keys:
        raise ConfigError(
            f"issuer {issuer!r} has no keys: set jwks_file, public_key_files or a secret"
        )
    kids = [key.kid for key in keys]
    if len(keys) > 1 and None in kids:
        raise ConfigError(f"issuer {issuer!r}: with several keys, every key needs a kid")
    duplicates = sorted({kid for kid in kids if kid is not None and kids.count(kid) > 1})
    if duplicates:
        raise ConfigError(f"issuer {issuer!r}: duplicate kid {', '.join(duplicates)}")
    for key in keys:
        if key.algorithm not in algorithms:
            raise ConfigError(
                f"issuer {issuer!r}: key {key.kid or '(no kid)'} is a {key.algorithm} key, "
                f"but the issuer allows only {', '.join(sorted(algorithms))}"
            )
    unused = sorted(algorithms - {key.algorithm for key in keys})
    if unused:
        raise ConfigError(f"issuer {issuer!r}: no key for allowed algorithm {', '.join(unused)}")
    return TrustedIssuer(issuer, audience, algorithms, tuple(keys), typ)


def _load_secret(config: IssuerConfig, environ: Mapping[str, str] | None) -> bytes:
    name = config.issuer
    if config.hs256_secret_file is not None:
        try:
            secret = config.hs256_secret_file.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"issuer {name!r}: cannot read hs256_secret_file {config.hs256_secret_file} "
                f"({type(exc).__name__})"
            ) from None
        # Editors and `echo` add a final newline; it is never meant to be part of the secret.
        secret = secret.rstrip(b"\r\n")
    else:
        env = os.environ if environ is None else environ
        variable = config.hs256_secret_env or ""
        if variable not in env:
            raise ConfigError(f"issuer {name!r}: environment variable {variable} is not set")
        secret = env[variable].encode("utf-8")
    if len(secret) < MIN_HS256_SECRET_BYTES:
        raise ConfigError(
            f"issuer {name!r}: the HS256 secret must be at least {MIN_HS256_SECRET_BYTES} bytes"
        )
    return secret


def _load_jwks(issuer: str, path: Path) -> list[VerificationKey]:
    where = f"issuer {issuer!r}: JWKS file {path}"
    try:
        document: Any = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read ({type(exc).__name__})") from None
    except ValueError:
        raise ConfigError(f"{where} is not valid JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ConfigError(f"{where} must be an object with a 'keys' list")
    keys = [_jwk_to_key(where, index, jwk) for index, jwk in enumerate(document["keys"])]
    if not keys:
        raise ConfigError(f"{where} holds no keys")
    return keys


def _jwk_to_key(where: str, index: int, jwk: Any) -> VerificationKey:
    if not isinstance(jwk, dict):
        raise ConfigError(f"{where}: key #{index} is not an object")
    kid = jwk.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid):
        raise ConfigError(f"{where}: key #{index} has a kid that is not a non-empty string")
    label = f"{where}: key {kid or f'#{index}'}"
    if _PRIVATE_JWK_MEMBERS & jwk.keys():
        raise ConfigError(f"{label} holds private or symmetric key material; publish public keys")
    if jwk.get("use", "sig") != "sig":
        raise ConfigError(f"{label} is not a signature key (use={_short(jwk.get('use'))})")
    kty = jwk.get("kty")
    loader = _JWK_LOADERS.get(kty) if isinstance(kty, str) else None
    if loader is None:
        raise ConfigError(f"{label} has unsupported kty {_short(kty)} (RSA, EC or OKP)")
    try:
        key = loader(jwk)
    except Exception:  # noqa: BLE001 - PyJWT's messages may quote the key; name the kind only
        raise ConfigError(f"{label} is not a valid {kty} key") from None
    verification_key = _checked(label, kid, key)
    declared = jwk.get("alg")
    if declared is not None and declared != verification_key.algorithm:
        raise ConfigError(
            f"{label} declares alg {declared!r} but is a {verification_key.algorithm} key"
        )
    return verification_key


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _load_pem(issuer: str, kid: str, path: Path) -> VerificationKey:
    label = f"issuer {issuer!r}: public key {kid} ({path})"
    if not kid:
        raise ConfigError(f"issuer {issuer!r}: public_key_files has an empty kid")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{label} cannot be read ({type(exc).__name__})") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ConfigError(f"{label} is not a PEM public key") from None
    return _checked(label, kid, key)


def _checked(label: str, kid: str | None, key: Any) -> VerificationKey:
    """Accept only the public key types the broker supports, bound to their one algorithm."""
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise ConfigError(
            f"{label} is a {type(key).__name__}: only RSA, EC P-256 and Ed25519 public keys"
        )
    try:
        algorithm = algorithm_for(key)
    except ValueError:
        raise ConfigError(f"{label}: EC keys must be on curve P-256") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise ConfigError(f"{label} has {key.key_size} bits; at least {MIN_RSA_BITS} are needed")
    return VerificationKey(kid, algorithm, key)

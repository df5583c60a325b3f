"""Bearer JWT -> :class:`~broker.auth.principal.Principal`.

The order of checks is the defence, so it is written down:

1. size cap (``max_token_bytes``) before any parsing, so a huge token costs nothing;
2. the *unverified* header: ``alg: none``, and headers that would let the token name its own
   key or extensions (``jwk``, ``jku``, ``x5u``, ``x5c``, ``crit``, ``b64``), are refused;
3. the *unverified* ``iss`` picks one configured issuer; its allow-list must hold the header's
   ``alg`` and its required ``typ`` must match; ``kid`` only selects among that issuer's keys;
4. the selected key must be bound to exactly that ``alg`` (keys are bound to one algorithm at
   load, see :mod:`broker.auth.keys`), so an HS256 token can never be checked with an RSA key;
5. PyJWT verifies the signature, ``iss`` and ``aud`` with ``algorithms=[alg]`` and requires
   ``exp``, ``iss``, ``aud`` and ``sub``;
6. time claims, tenant and roles are checked here.

Why time is checked here and not by PyJWT: PyJWT reads the wall clock and cannot be given
``now``. Patching its clock would be global and thread-unsafe, so PyJWT runs with
``verify_exp``, ``verify_nbf`` and ``verify_iat`` off (``require`` still insists on ``exp``) and
:func:`_check_times` applies the same rules, with the same leeway, against an injected ``now``.
Tests thus move time instead of sleeping, and the cache uses the same clock.

Every failure is :class:`~broker.errors.Unauthenticated` with a precise reason for the log.
Reasons name the check, the issuer, the kid and the algorithm; never the token, and never a
claim value other than those (attacker-chosen strings are shortened and ``repr``-quoted).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import jwt

from broker.auth.cache import PrincipalCache
from broker.auth.dev_issuer import DevIssuer
from broker.auth.keys import TrustedIssuer, load_issuer
from broker.auth.principal import Principal, Role, is_valid_tenant
from broker.config import AuthConfig, ConfigError
from broker.errors import Unauthenticated
from broker.logging import get_logger

_log = get_logger(__name__)

FORBIDDEN_HEADERS: Final = ("jwk", "jku", "x5u", "x5c", "crit", "b64")
REQUIRED_CLAIMS: Final = ("exp", "iss", "aud", "sub")
_ROLES = {role.value: role for role in Role}
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class TokenVerifier:
    """Verifies bearer tokens against the configured issuers and caches the results.

    Build one per process and share it: it is thread-safe. ``data_dir`` is needed only when the
    development issuer is enabled; ``environ`` (default ``os.environ``) supplies HS256 secrets
    named by ``hs256_secret_env``; ``clock`` is the default for ``now``.
    """

    def __init__(
        self,
        config: AuthConfig,
        *,
        data_dir: Path | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._clock = clock
        self._leeway = config.leeway_seconds
        self._cache = PrincipalCache(config.cache_size)
        self._issuers: dict[str, TrustedIssuer] = {}
        for issuer_config in config.issuers:
            self._add(load_issuer(issuer_config, environ))
        self.dev_issuer: DevIssuer | None = None
        if config.dev_issuer.enabled:
            if data_dir is None:
                raise ConfigError("auth.dev_issuer is enabled, so a data directory is needed")
            self.dev_issuer = DevIssuer.from_auth_config(config, data_dir)
            self._add(self.dev_issuer.trusted_issuer())
            _log.warning(
                "dev_issuer_enabled",
                issuer=config.dev_issuer.issuer,
                note="anyone who can read the data directory can mint tokens; not for production",
            )
        if not self._issuers:
            _log.warning("no_token_issuers", note="every authenticated call will be refused")

    def _add(self, issuer: TrustedIssuer) -> None:
        if issuer.issuer in self._issuers:
            raise ConfigError(f"issuer {issuer.issuer!r} is configured more than once")
        self._issuers[issuer.issuer] = issuer

    def trusts(self, issuer: str) -> bool:
        """True if tokens of ``issuer`` are accepted (a configured issuer or the dev issuer)."""
        return issuer in self._issuers

    def audience_of(self, issuer: str) -> str:
        """The ``aud`` this verifier requires of ``issuer``'s access tokens (KeyError if none)."""
        return self._issuers[issuer].audience

    def authenticate(
        self, metadata: Sequence[tuple[str, str | bytes]], *, now: float | None = None
    ) -> Principal:
        """The principal for a call's gRPC metadata (``authorization: Bearer <jwt>``)."""
        values = [value for key, value in metadata if key.lower() == "authorization"]
        if not values:
            raise Unauthenticated("no authorization metadata")
        if len(values) > 1:
            raise Unauthenticated("more than one authorization metadata entry")
        value = values[0]
        if len(value) > self._config.max_token_bytes + 64:
            raise Unauthenticated(
                f"authorization metadata over {self._config.max_token_bytes} bytes"
            )
        if isinstance(value, bytes):
            try:
                value = value.decode("ascii")
            except UnicodeDecodeError:
                raise Unauthenticated("authorization metadata is not ASCII") from None
        scheme, _, credentials = value.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise Unauthenticated("authorization scheme is not Bearer")
        credentials = credentials.strip()
        if not credentials or " " in credentials:
            raise Unauthenticated("malformed Bearer credentials")
        return self.verify(credentials, now=now)

    def verify(self, token: str, *, now: float | None = None) -> Principal:
        """Verify ``token`` at time ``now`` (default: the clock) and return its principal."""
        if len(token) > self._config.max_token_bytes:
            raise Unauthenticated(
                f"token is over the limit of {self._config.max_token_bytes} bytes"
            )
        if not token.isascii():
            raise Unauthenticated("malformed token: not ASCII")
        at = self._clock() if now is None else now
        digest = hashlib.sha256(token.encode("ascii")).digest()
        cached = self._cache.get(digest, at, self._leeway)
        if cached is not None:
            return cached
        principal, not_before = self._verify_uncached(token, at)
        self._cache.put(digest, principal, not_before)
        return principal

    def verify_id_token(
        self, token: str, *, client_id: str, nonce: str, now: float | None = None
    ) -> dict[str, Any]:
        """The claims of an OpenID Connect ID token (Core 1.0 section 3.1.3.7), or Unauthenticated.

        The same header, issuer, algorithm and key rules as an access token, against the same
        configured keys, but with ``aud`` the console's ``client_id``; ``nonce`` must equal the
        one the console sent (constant-time), and ``azp``, if present, must be the client. The
        issuer's required ``typ`` is for access tokens and is not applied. Not cached: an ID
        token is read once, at sign-in.
        """
        if len(token) > self._config.max_token_bytes or not token.isascii():
            raise Unauthenticated("ID token is too large or not ASCII")
        at = self._clock() if now is None else now
        claims = self._verified_claims(
            token, at, audience=client_id, required=(*REQUIRED_CLAIMS, "iat", "nonce")
        )
        presented = claims.get("nonce")
        if not isinstance(presented, str) or not hmac.compare_digest(
            presented.encode(), nonce.encode()
        ):
            raise Unauthenticated(f"ID token nonce does not match (issuer {claims['iss']!r})")
        azp = claims.get("azp")
        audience = claims.get("aud")
        if azp is not None and azp != client_id:
            raise Unauthenticated("ID token azp is not this client")
        if isinstance(audience, list) and len(audience) > 1 and azp is None:
            raise Unauthenticated("ID token has several audiences and no azp")
        return claims

    def _verify_uncached(self, token: str, now: float) -> tuple[Principal, float | None]:
        claims = self._verified_claims(token, now)
        issuer = self._issuers[claims["iss"]]
        expires_at, not_before = _check_times(claims, now, self._leeway)
        return self._principal(claims, issuer, expires_at), not_before

    def _verified_claims(
        self,
        token: str,
        now: float,
        *,
        audience: str | None = None,
        required: tuple[str, ...] = REQUIRED_CLAIMS,
    ) -> dict[str, Any]:
        """Checks 2 to 5 and the time claims; ``audience`` set means an ID token for it."""
        header, unverified = _unverified_parts(token)
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise Unauthenticated("token header alg is missing or not a string")
        if alg.lower() == "none":
            raise Unauthenticated("unsigned token (alg none)")
        for name in FORBIDDEN_HEADERS:
            if name in header:
                raise Unauthenticated(f"token header {name} is not accepted")
        iss = unverified.get("iss")
        if not isinstance(iss, str):
            raise Unauthenticated("token has no iss claim")
        issuer = self._issuers.get(iss)
        if issuer is None:
            raise Unauthenticated(f"unknown issuer {_quote(iss)}")
        if alg not in issuer.algorithms:
            raise Unauthenticated(f"alg {_quote(alg)} is not allowed for issuer {iss!r}")
        if (
            audience is None
            and issuer.typ is not None
            and not _typ_matches(header.get("typ"), issuer.typ)
        ):
            raise Unauthenticated(f"typ header is not {issuer.typ!r} as issuer {iss!r} requires")
        kid = header.get("kid")
        key = issuer.key_for(kid)
        if key is None:
            if kid is None:
                raise Unauthenticated(f"token has no kid and issuer {iss!r} has several keys")
            raise Unauthenticated(f"unknown kid {_quote(kid)} for issuer {iss!r}")
        if key.algorithm != alg:
            raise Unauthenticated(
                f"alg {alg} does not match key {key.kid or '(no kid)'} ({key.algorithm}) "
                f"of issuer {iss!r}"
            )
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=issuer.audience if audience is None else audience,
                issuer=issuer.issuer,
                leeway=self._leeway,
                options={
                    "require": list(required),
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"{_describe(exc)} (issuer {iss!r}, alg {alg})") from None
        _check_times(claims, now, self._leeway)
        return claims

    def _principal(self, claims: dict[str, Any], issuer: TrustedIssuer, exp: float) -> Principal:
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise Unauthenticated("sub claim is not a non-empty string")
        tenant = claims.get(self._config.tenant_claim)
        if tenant is None:
            raise Unauthenticated(f"missing tenant claim {self._config.tenant_claim!r}")
        if not is_valid_tenant(tenant):
            raise Unauthenticated(f"tenant claim {self._config.tenant_claim!r} is malformed")
        return Principal(
            tenant=tenant,
            subject=subject,
            roles=_roles(claims.get(self._config.roles_claim), self._config.roles_claim),
            issuer=issuer.issuer,
            expires_at=exp,
            claims=MappingProxyType(dict(claims)),
        )


def _unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims, unverified, parsed here so our header checks run before PyJWT's.

    Nothing read here is trusted: it only chooses the issuer and key for the real verification.
    ``RecursionError`` is caught because a deeply nested JSON header would otherwise escape.
    """
    parts = token.split(".")
    if len(parts) != 3 or not all(_B64URL.fullmatch(part) for part in parts):
        raise Unauthenticated("malformed token: not three base64url parts")
    try:
        header, claims = (json.loads(_b64decode(part)) for part in parts[:2])
    except (ValueError, RecursionError):
        raise Unauthenticated("malformed token: header or claims are not JSON") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise Unauthenticated("malformed token: header or claims are not JSON objects")
    return header, claims


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _roles(value: object, claim: str) -> frozenset[Role]:
    """Roles from a list of strings or a space-separated string; unknown names are ignored."""
    if value is None:
        return frozenset()
    if isinstance(value, str):
        names: list[object] = list(value.split())
    elif isinstance(value, list):
        names = value
    else:
        raise Unauthenticated(f"roles claim {claim!r} is neither a list nor a string")
    if not all(isinstance(name, str) for name in names):
        raise Unauthenticated(f"roles claim {claim!r} holds a value that is not a string")
    return frozenset(_ROLES[name] for name in names if isinstance(name, str) and name in _ROLES)


def _check_times(
    claims: Mapping[str, Any], now: float, leeway: float
) -> tuple[float, float | None]:
    """Apply PyJWT's exp/nbf/iat rules against ``now``; return (exp, nbf)."""
    exp = _numeric(claims, "exp")
    nbf = _numeric(claims, "nbf")
    iat = _numeric(claims, "iat")
    if exp is None:  # unreachable after PyJWT's ``require``; kept so the check cannot be lost
        raise Unauthenticated("missing required claim exp")
    if exp <= now - leeway:
        raise Unauthenticated("token has expired")
    if nbf is not None and nbf > now + leeway:
        raise Unauthenticated("token is not yet valid (nbf)")
    if iat is not None and iat > now + leeway:
        raise Unauthenticated("token was issued in the future (iat)")
    return exp, nbf


def _numeric(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Unauthenticated(f"claim {name} is not a NumericDate")
    return float(value)


def _typ_matches(actual: object, expected: str) -> bool:
    """Compare media types as RFC 7515 section 4.1.9 says: case-insensitive, optional prefix."""
    if not isinstance(actual, str):
        return False

    def bare(value: str) -> str:
        value = value.lower()
        return value.removeprefix("application/")

    return bare(actual) == bare(expected)


def _describe(exc: jwt.PyJWTError) -> str:
    """A fixed description per PyJWT error class, so no PyJWT message (or value) reaches logs."""
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"missing required claim {exc.claim}"
    descriptions: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
        (jwt.InvalidSignatureError, "signature verification failed"),
        (jwt.InvalidAudienceError, "wrong audience"),
        (jwt.InvalidIssuerError, "wrong issuer"),
        (jwt.InvalidAlgorithmError, "algorithm not allowed"),
        (jwt.InvalidKeyError, "key does not fit the algorithm"),
        (jwt.DecodeError, "malformed token"),
    )
    for kind, text in descriptions:
        if isinstance(exc, kind):
            return text
    return f"invalid token ({type(exc).__name__})"


def _quote(value: object, limit: int = 64) -> str:
    """An attacker-chosen header or claim, shortened and quoted so it cannot forge log lines."""
    text = value if isinstance(value, str) else type(value).__name__
    return repr(text[:limit] + ("..." if len(text) > limit else ""))

"""TokenVerifier: good tokens for every key source and algorithm, and every way to fail."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from structlog.testing import capture_logs

from broker.auth.principal import Principal, Role
from broker.auth.tokens import TokenVerifier
from broker.errors import Unauthenticated
from tests.unit.auth.conftest import (
    AUDIENCE,
    HS_SECRET,
    ISSUER,
    NOW,
    Keys,
    MakeAuth,
    claims,
    public_pem,
    sign,
)


@pytest.fixture
def verifier(make_auth: MakeAuth, jwks_file: Path, pem_files: dict[str, Path]) -> TokenVerifier:
    config = make_auth(
        algorithms=["RS256", "ES256", "EdDSA"], jwks_file=jwks_file, public_key_files=pem_files
    )
    return TokenVerifier(config)


@pytest.fixture
def rsa_only(make_auth: MakeAuth, pem_files: dict[str, Path]) -> TokenVerifier:
    """An issuer with exactly one key, so tokens may omit ``kid``."""
    return TokenVerifier(
        make_auth(algorithms=["RS256"], public_key_files={"rsa-pem": pem_files["rsa-pem"]})
    )


def reason_of(verifier: TokenVerifier, token: str, now: float = NOW) -> str:
    with pytest.raises(Unauthenticated) as info:
        verifier.verify(token, now=now)
    assert info.value.message == Unauthenticated.PUBLIC_MESSAGE
    assert token not in (info.value.log_reason or "")
    return info.value.log_reason or ""


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"x") -> str:
    parts = [json.dumps(header).encode(), json.dumps(payload).encode()]
    return ".".join([*(b64(part) for part in parts), b64(signature)])


# -- good tokens -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attribute", "algorithm", "kid"),
    [
        ("rsa", "RS256", "rsa-1"),
        ("ec", "ES256", "ec-1"),
        ("ed", "EdDSA", "ed-1"),
        ("rsa", "RS256", "rsa-pem"),
        ("ec", "ES256", "ec-pem"),
        ("ed", "EdDSA", "ed-pem"),
    ],
)
def test_good_tokens_from_jwks_and_pem(
    verifier: TokenVerifier, keys: Keys, attribute: str, algorithm: str, kid: str
) -> None:
    token = sign(getattr(keys, attribute), algorithm, kid=kid, roles=["buyer", "nonsense"])
    principal = verifier.verify(token, now=NOW)
    assert principal == Principal(
        tenant="bank",
        subject="svc-1",
        roles=frozenset({Role.BUYER}),
        issuer=ISSUER,
        expires_at=NOW + 600,
        claims=principal.claims,
    )
    assert principal.claims["sub"] == "svc-1"


def test_hs256_with_secret_from_env(make_auth: MakeAuth) -> None:
    config = make_auth(algorithms=["HS256"], hs256_secret_env="IDP_SECRET")
    verifier = TokenVerifier(config, environ={"IDP_SECRET": HS_SECRET})
    principal = verifier.verify(sign(HS_SECRET, "HS256"), now=NOW)
    assert principal.tenant == "bank"


def test_hs256_with_secret_from_file(make_auth: MakeAuth, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(HS_SECRET + "\n")
    verifier = TokenVerifier(make_auth(algorithms=["HS256"], hs256_secret_file=secret_file))
    assert verifier.verify(sign(HS_SECRET, "HS256"), now=NOW).subject == "svc-1"


def test_single_key_needs_no_kid(rsa_only: TokenVerifier, keys: Keys) -> None:
    assert rsa_only.verify(sign(keys.rsa, "RS256"), now=NOW).tenant == "bank"


def test_roles_as_space_separated_string(verifier: TokenVerifier, keys: Keys) -> None:
    token = sign(keys.ed, "EdDSA", kid="ed-1", roles="vendor admin root")
    assert verifier.verify(token, now=NOW).roles == {Role.VENDOR, Role.ADMIN}


def test_missing_roles_claim_means_no_roles(verifier: TokenVerifier, keys: Keys) -> None:
    token = sign(keys.ed, "EdDSA", kid="ed-1", roles=None)
    assert verifier.verify(token, now=NOW).roles == frozenset()


def test_audience_list_containing_ours(verifier: TokenVerifier, keys: Keys) -> None:
    token = sign(keys.ed, "EdDSA", kid="ed-1", aud=["other", AUDIENCE])
    assert verifier.verify(token, now=NOW).subject == "svc-1"


def test_custom_claim_names(make_auth: MakeAuth, pem_files: dict[str, Path], keys: Keys) -> None:
    config = make_auth(
        algorithms=["EdDSA"],
        public_key_files={"ed-pem": pem_files["ed-pem"]},
        auth={"tenant_claim": "org", "roles_claim": "scp"},
    )
    token = sign(keys.ed, "EdDSA", tenant=None, roles=None, org="acme", scp=["vendor"])
    principal = TokenVerifier(config).verify(token, now=NOW)
    assert (principal.tenant, principal.roles) == ("acme", frozenset({Role.VENDOR}))


def test_typ_checked_when_configured(
    make_auth: MakeAuth, pem_files: dict[str, Path], keys: Keys
) -> None:
    config = make_auth(
        algorithms=["EdDSA"], public_key_files={"ed-pem": pem_files["ed-pem"]}, typ="at+jwt"
    )
    verifier = TokenVerifier(config)
    good = sign(keys.ed, "EdDSA", headers={"typ": "application/AT+JWT"})
    assert verifier.verify(good, now=NOW).tenant == "bank"
    assert "typ" in reason_of(verifier, sign(keys.ed, "EdDSA", headers={"typ": "JWT"}))


# -- metadata ----------------------------------------------------------------------------------


def test_authenticate_reads_bearer_metadata(verifier: TokenVerifier, keys: Keys) -> None:
    token = sign(keys.ed, "EdDSA", kid="ed-1")
    metadata = (("user-agent", "x"), ("authorization", f"Bearer {token}".encode()))
    assert verifier.authenticate(metadata, now=NOW).subject == "svc-1"


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((("user-agent", "x"),), "no authorization metadata"),
        ((("authorization", "Basic dXNlcjpwYXNz"),), "not Bearer"),
        ((("authorization", "Bearer"),), "malformed Bearer"),
        ((("authorization", "Bearer a b"),), "malformed Bearer"),
        ((("authorization", b"Bearer \xff"),), "not ASCII"),
        ((("authorization", "Bearer not-a-jwt"),), "malformed token"),
        ((("authorization", "Bearer a.b.c"),), "malformed token"),
        ((("authorization", "Bearer x"), ("authorization", "Bearer y")), "more than one"),
    ],
)
def test_bad_metadata(
    verifier: TokenVerifier, metadata: tuple[tuple[str, str | bytes], ...], reason: str
) -> None:
    with pytest.raises(Unauthenticated) as info:
        verifier.authenticate(metadata, now=NOW)
    assert reason in (info.value.log_reason or "")
    assert str(info.value) == Unauthenticated.PUBLIC_MESSAGE


# -- bad tokens --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"exp": int(NOW) - 31}, "expired"),
        ({"nbf": int(NOW) + 31}, "not yet valid"),
        ({"iat": int(NOW) + 31}, "issued in the future"),
        ({"aud": "someone-else"}, "wrong audience"),
        ({"exp": None}, "missing required claim exp"),
        ({"aud": None}, "missing required claim aud"),
        ({"sub": None}, "missing required claim sub"),
        ({"sub": ""}, "sub claim"),
        ({"exp": "tomorrow"}, "exp is not a NumericDate"),
        ({"tenant": None}, "missing tenant claim"),
        ({"tenant": "bank/../other"}, "malformed"),
        ({"tenant": ""}, "malformed"),
        ({"tenant": "x" * 129}, "malformed"),
        ({"roles": 7}, "neither a list nor a string"),
        ({"roles": ["buyer", 1]}, "not a string"),
    ],
)
def test_bad_claims(
    verifier: TokenVerifier, keys: Keys, overrides: dict[str, Any], reason: str
) -> None:
    assert reason in reason_of(verifier, sign(keys.ed, "EdDSA", kid="ed-1", **overrides))


def test_missing_iss(verifier: TokenVerifier, keys: Keys) -> None:
    assert "no iss" in reason_of(verifier, sign(keys.ed, "EdDSA", kid="ed-1", iss=None))


def test_unknown_issuer(verifier: TokenVerifier, keys: Keys) -> None:
    token = sign(keys.ed, "EdDSA", kid="ed-1", iss="https://evil.example")
    assert "unknown issuer 'https://evil.example'" in reason_of(verifier, token)


def test_wrong_issuer_key_fails_signature(
    make_auth: MakeAuth, pem_files: dict[str, Path], keys: Keys
) -> None:
    """A token claiming our issuer but signed by another party's key, with a known kid."""
    verifier = TokenVerifier(
        make_auth(algorithms=["EdDSA"], public_key_files={"ed-pem": pem_files["ed-pem"]})
    )
    token = sign(ed25519.Ed25519PrivateKey.generate(), "EdDSA", kid="ed-pem")
    assert "signature verification failed" in reason_of(verifier, token)


def test_tampered_payload(verifier: TokenVerifier, keys: Keys) -> None:
    header, _, signature = sign(keys.ed, "EdDSA", kid="ed-1").split(".")
    payload = b64(json.dumps({"iss": ISSUER, "aud": AUDIENCE, "sub": "admin"}).encode())
    assert "signature" in reason_of(verifier, f"{header}.{payload}.{signature}")


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none(verifier: TokenVerifier, alg: str) -> None:
    token = forge({"alg": alg, "typ": "JWT"}, {"iss": ISSUER}, b"")
    assert "alg none" in reason_of(verifier, token)


def test_alg_not_in_allow_list(rsa_only: TokenVerifier, keys: Keys) -> None:
    token = sign(keys.ec, "ES256", kid="rsa-pem")
    assert "alg 'ES256' is not allowed for issuer" in reason_of(rsa_only, token)


def test_algorithm_confusion_hs256_with_rsa_public_key(rsa_only: TokenVerifier, keys: Keys) -> None:
    """The classic attack: HS256 'signed' with the issuer's RSA public key PEM as the secret."""
    header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-pem"}
    signing_input = ".".join(b64(json.dumps(part).encode()) for part in (header, claims())).encode()
    mac = hmac.new(public_pem(keys.rsa), signing_input, hashlib.sha256).digest()
    token = f"{signing_input.decode()}.{b64(mac)}"
    assert "alg 'HS256' is not allowed" in reason_of(rsa_only, token)


def test_key_bound_to_its_algorithm(verifier: TokenVerifier, keys: Keys) -> None:
    """Both algorithms allowed, but the kid names a key of the other type."""
    token = sign(keys.ec, "ES256", kid="rsa-1")
    assert "alg ES256 does not match key rsa-1 (RS256)" in reason_of(verifier, token)


def test_unknown_kid(verifier: TokenVerifier, keys: Keys) -> None:
    assert "unknown kid 'nope'" in reason_of(verifier, sign(keys.ed, "EdDSA", kid="nope"))


def test_no_kid_with_several_keys(verifier: TokenVerifier, keys: Keys) -> None:
    assert "no kid" in reason_of(verifier, sign(keys.ed, "EdDSA"))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("jwk", {"kty": "OKP"}),
        ("jku", "https://evil.example/jwks"),
        ("x5u", "https://evil.example/cert"),
        ("x5c", ["MIIB"]),
        ("crit", ["exp"]),
        ("b64", False),
    ],
)
def test_forbidden_headers(verifier: TokenVerifier, keys: Keys, name: str, value: Any) -> None:
    if name == "b64":  # PyJWT would detach the payload; the header alone must be refused
        token = forge({"alg": "EdDSA", "kid": "ed-1", name: value}, claims())
    else:
        token = sign(keys.ed, "EdDSA", kid="ed-1", headers={name: value})
    assert f"token header {name} is not accepted" in reason_of(verifier, token)


def test_oversized_token_refused_even_if_validly_signed(
    verifier: TokenVerifier, keys: Keys
) -> None:
    token = sign(keys.ed, "EdDSA", kid="ed-1", padding="p" * 9000)
    assert len(token) > 8 * 1024
    assert "over the limit of 8192 bytes" in reason_of(verifier, token)
    metadata = (("authorization", f"Bearer {token}"),)
    with pytest.raises(Unauthenticated, match="authentication failed"):
        verifier.authenticate(metadata, now=NOW)


def test_max_token_bytes_is_configurable(
    make_auth: MakeAuth, pem_files: dict[str, Path], keys: Keys
) -> None:
    config = make_auth(
        algorithms=["EdDSA"],
        public_key_files={"ed-pem": pem_files["ed-pem"]},
        auth={"max_token_bytes": 256},
    )
    assert "256 bytes" in reason_of(TokenVerifier(config), sign(keys.ed, "EdDSA"))


# -- time, leeway and the cache ----------------------------------------------------------------


def test_leeway_honoured(verifier: TokenVerifier, keys: Keys) -> None:
    token = sign(keys.ed, "EdDSA", kid="ed-1", exp=int(NOW) - 29, nbf=int(NOW) + 29)
    assert verifier.verify(token, now=NOW).subject == "svc-1"


def test_leeway_zero(make_auth: MakeAuth, pem_files: dict[str, Path], keys: Keys) -> None:
    config = make_auth(
        algorithms=["EdDSA"],
        public_key_files={"ed-pem": pem_files["ed-pem"]},
        auth={"leeway_seconds": 0},
    )
    token = sign(keys.ed, "EdDSA", exp=int(NOW))
    assert "expired" in reason_of(TokenVerifier(config), token)


def test_clock_is_the_default_for_now(
    make_auth: MakeAuth, pem_files: dict[str, Path], keys: Keys
) -> None:
    config = make_auth(algorithms=["EdDSA"], public_key_files={"ed-pem": pem_files["ed-pem"]})
    verifier = TokenVerifier(config, clock=lambda: NOW + 10_000)
    with pytest.raises(Unauthenticated):
        verifier.verify(sign(keys.ed, "EdDSA"))


def test_cache_hit_returns_same_principal(verifier: TokenVerifier, keys: Keys) -> None:
    token = sign(keys.ed, "EdDSA", kid="ed-1")
    first = verifier.verify(token, now=NOW)
    assert verifier.verify(token, now=NOW + 100) is first


def test_cached_token_refused_after_expiry(verifier: TokenVerifier, keys: Keys) -> None:
    token = sign(keys.ed, "EdDSA", kid="ed-1")
    verifier.verify(token, now=NOW)
    assert verifier.verify(token, now=NOW + 600 + 29).subject == "svc-1"  # within leeway
    assert "expired" in reason_of(verifier, token, now=NOW + 600 + 30)


def test_cache_is_bounded(make_auth: MakeAuth, pem_files: dict[str, Path], keys: Keys) -> None:
    config = make_auth(
        algorithms=["EdDSA"],
        public_key_files={"ed-pem": pem_files["ed-pem"]},
        auth={"cache_size": 2},
    )
    verifier = TokenVerifier(config)
    tokens = [sign(keys.ed, "EdDSA", sub=f"svc-{n}") for n in range(3)]
    principals = [verifier.verify(token, now=NOW) for token in tokens]
    assert verifier.verify(tokens[2], now=NOW) is principals[2]
    assert verifier.verify(tokens[0], now=NOW) is not principals[0]  # evicted, verified again


def test_cache_disabled(make_auth: MakeAuth, pem_files: dict[str, Path], keys: Keys) -> None:
    config = make_auth(
        algorithms=["EdDSA"],
        public_key_files={"ed-pem": pem_files["ed-pem"]},
        auth={"cache_size": 0},
    )
    verifier = TokenVerifier(config)
    token = sign(keys.ed, "EdDSA")
    assert verifier.verify(token, now=NOW) is not verifier.verify(token, now=NOW)


# -- what reaches the caller and the log -------------------------------------------------------


def test_reason_is_precise_but_public_message_generic(verifier: TokenVerifier, keys: Keys) -> None:
    secret_subject = "alice@example.com"
    token = sign(keys.ed, "EdDSA", kid="ed-1", sub=secret_subject, exp=int(NOW) - 100)
    with capture_logs() as logs, pytest.raises(Unauthenticated) as info:
        verifier.verify(token, now=NOW)
    assert info.value.log_reason == "token has expired"
    assert str(info.value) == "authentication failed: send a valid bearer token"
    assert info.value.details == {}
    assert secret_subject not in repr(logs)
    assert token not in repr(logs)


def test_claims_of_principal_are_read_only(verifier: TokenVerifier, keys: Keys) -> None:
    principal = verifier.verify(sign(keys.ed, "EdDSA", kid="ed-1"), now=NOW)
    with pytest.raises(TypeError):
        principal.claims["tenant"] = "other"  # type: ignore[index]


@pytest.mark.parametrize(
    "token",
    [
        "a.b",
        "a.b.c.d",
        "a.b.",
        "a+b.c.d",
        forge({"alg": "EdDSA"}, {}).replace(".", "..", 1),
        b64(b"[1]") + "." + b64(b"{}") + ".c2ln",
        b64(b"{" * 3) + "." + b64(b"{}") + ".c2ln",
        b64(b"[" * 5000) + "." + b64(b"{}") + ".c2ln",
        b64(b"\xff\xfe") + "." + b64(b"{}") + ".c2ln",
    ],
)
def test_malformed_tokens(verifier: TokenVerifier, token: str) -> None:
    assert "malformed token" in reason_of(verifier, token)


def test_alg_missing(verifier: TokenVerifier) -> None:
    assert "alg is missing" in reason_of(verifier, forge({"kid": "ed-1"}, claims()))


def test_cache_is_thread_safe(make_auth: MakeAuth, pem_files: dict[str, Path], keys: Keys) -> None:
    config = make_auth(
        algorithms=["EdDSA"],
        public_key_files={"ed-pem": pem_files["ed-pem"]},
        auth={"cache_size": 4},
    )
    verifier = TokenVerifier(config)
    tokens = [sign(keys.ed, "EdDSA", sub=f"svc-{n}") for n in range(8)]

    def check(n: int) -> bool:
        return verifier.verify(tokens[n % 8], now=NOW).subject == f"svc-{n % 8}"

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(check, range(400)))

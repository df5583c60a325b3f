"""The development issuer: key files, minting, and trust by the verifier when enabled."""

from __future__ import annotations

import stat
from pathlib import Path

import jwt
import pytest
from structlog.testing import capture_logs

from broker.auth.dev_issuer import DevIssuer
from broker.auth.principal import Role
from broker.auth.tokens import TokenVerifier
from broker.config import AuthConfig, ConfigError, DevIssuerConfig
from broker.errors import Unauthenticated
from tests.unit.auth.conftest import NOW

ENABLED = AuthConfig(dev_issuer=DevIssuerConfig(enabled=True))


def test_key_pair_created_on_first_use_with_private_mode(tmp_path: Path) -> None:
    issuer = DevIssuer(tmp_path)
    assert not (tmp_path / "dev-issuer").exists()
    issuer.mint("svc", "bank", [Role.BUYER], now=NOW)
    private = tmp_path / "dev-issuer" / "private.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "dev-issuer").stat().st_mode) == 0o700
    assert (tmp_path / "dev-issuer" / "public.pem").read_bytes() == issuer.public_key_pem()
    assert [p.name for p in (tmp_path / "dev-issuer").iterdir() if p.name.startswith(".")] == []


def test_key_is_reused_across_instances(tmp_path: Path) -> None:
    assert DevIssuer(tmp_path).kid == DevIssuer(tmp_path).kid


def test_minted_token_shape(tmp_path: Path) -> None:
    issuer = DevIssuer(tmp_path)
    token = issuer.mint("svc", "bank", ["buyer", Role.VENDOR], ttl_seconds=60, now=NOW)
    header = jwt.get_unverified_header(token)
    assert (header["alg"], header["kid"]) == ("EdDSA", issuer.kid)
    claims = jwt.decode(
        token,
        issuer.public_key(),
        algorithms=["EdDSA"],
        audience="model-broker",
        options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
    )
    assert claims == {
        "iss": "https://dev-issuer.broker.invalid",
        "aud": "model-broker",
        "sub": "svc",
        "iat": int(NOW),
        "nbf": int(NOW),
        "exp": int(NOW) + 60,
        "tenant": "bank",
        "roles": ["buyer", "vendor"],
    }


@pytest.mark.parametrize(
    ("subject", "tenant", "roles", "ttl"),
    [
        ("", "bank", [], 60),
        ("svc", "a b", [], 60),
        ("svc", "bank", ["root"], 60),
        ("svc", "bank", [], 0),
    ],
)
def test_mint_refuses_tokens_the_verifier_would_refuse(
    tmp_path: Path, subject: str, tenant: str, roles: list[str], ttl: int
) -> None:
    with pytest.raises(ValueError):
        DevIssuer(tmp_path).mint(subject, tenant, roles, ttl_seconds=ttl, now=NOW)


def test_verifier_trusts_dev_issuer_when_enabled_and_warns(tmp_path: Path) -> None:
    with capture_logs() as logs:
        verifier = TokenVerifier(ENABLED, data_dir=tmp_path)
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["dev_issuer_enabled"]
    token = DevIssuer(tmp_path).mint("svc", "bank", [Role.COMPLIANCE], now=NOW)
    principal = verifier.verify(token, now=NOW)
    assert (principal.tenant, principal.subject, principal.roles) == (
        "bank",
        "svc",
        frozenset({Role.COMPLIANCE}),
    )
    assert verifier.dev_issuer is not None


def test_verifier_ignores_dev_issuer_when_disabled(tmp_path: Path) -> None:
    token = DevIssuer(tmp_path).mint("svc", "bank", [Role.BUYER], now=NOW)
    with capture_logs() as logs:
        verifier = TokenVerifier(AuthConfig(), data_dir=tmp_path)
    assert "dev_issuer_enabled" not in [e["event"] for e in logs]
    with pytest.raises(Unauthenticated) as info:
        verifier.verify(token, now=NOW)
    assert "unknown issuer" in (info.value.log_reason or "")


def test_enabled_dev_issuer_needs_a_data_dir() -> None:
    with pytest.raises(ConfigError, match="data directory"):
        TokenVerifier(ENABLED)


def test_world_readable_private_key_is_refused(tmp_path: Path) -> None:
    DevIssuer(tmp_path).mint("svc", "bank", [], now=NOW)
    (tmp_path / "dev-issuer" / "private.pem").chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        DevIssuer(tmp_path).mint("svc", "bank", [], now=NOW)

"""OIDC sign-in parts without a provider: pending sign-ins (taken once, while fresh; time is
injected) and the issuer URL rule."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from broker.auth.tokens import TokenVerifier
from broker.config import AuthConfig, ConfigError, IssuerConfig, OidcSignInConfig
from broker.console.oidc import PENDING_SECONDS, OidcProvider, PendingLogin, PendingLogins


def _pending(at: float) -> PendingLogin:
    return PendingLogin(0, "state", "nonce", "verifier", "http://c/login/callback", at)


def test_a_pending_sign_in_can_be_taken_only_once() -> None:
    store = PendingLogins(clock=lambda: 100.0)
    login_id = store.put(_pending(100.0))
    assert store.take(login_id) == _pending(100.0)
    assert store.take(login_id) is None


def test_a_stale_pending_sign_in_is_not_returned() -> None:
    now = [100.0]
    store = PendingLogins(clock=lambda: now[0])
    login_id = store.put(_pending(100.0))
    now[0] += PENDING_SECONDS
    assert store.take(login_id) is None


def test_unknown_or_missing_ids_find_nothing() -> None:
    store = PendingLogins()
    store.put(_pending(0.0))
    assert store.take(None) is None
    assert store.take("") is None
    assert store.take("not-an-id") is None


def test_an_issuer_must_be_https_except_on_loopback(tmp_path: Path) -> None:
    issuers = [
        "https://login.example.com",
        "http://login.example.com",
        "http://127.0.0.1:9999",
        "ftp://127.0.0.1",
    ]
    auth = AuthConfig(
        issuers=[
            IssuerConfig(issuer=i, audience="a", algorithms=["ES256"], jwks_file=_jwks(tmp_path))
            for i in issuers
        ]
    )
    verifier = TokenVerifier(auth)
    with httpx.Client() as http:
        for issuer in ("https://login.example.com", "http://127.0.0.1:9999"):
            OidcProvider(OidcSignInConfig(issuer=issuer, client_id="c"), verifier, http, {})
        for issuer in ("http://login.example.com", "ftp://127.0.0.1"):
            with pytest.raises(ConfigError, match="https"):
                OidcProvider(OidcSignInConfig(issuer=issuer, client_id="c"), verifier, http, {})


def _jwks(tmp_path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    jwk = json.loads(ECAlgorithm.to_jwk(key))
    jwk["kid"] = "k1"
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}), encoding="utf-8")
    return path

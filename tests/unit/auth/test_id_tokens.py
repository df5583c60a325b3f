"""TokenVerifier.verify_id_token: the console's OIDC ID tokens, with the issuer's own keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.auth.tokens import TokenVerifier
from broker.errors import Unauthenticated
from tests.unit.auth.conftest import NOW, Keys, MakeAuth, sign

CLIENT = "compliance-console"
NONCE = "n-0123456789"


@pytest.fixture
def verifier(make_auth: MakeAuth, pem_files: dict[str, Path]) -> TokenVerifier:
    return TokenVerifier(
        make_auth(algorithms=["RS256"], public_key_files={"rsa-pem": pem_files["rsa-pem"]})
    )


def _refusal(verifier: TokenVerifier, token: str, nonce: str = NONCE) -> str:
    with pytest.raises(Unauthenticated) as info:
        verifier.verify_id_token(token, client_id=CLIENT, nonce=nonce, now=NOW)
    return info.value.log_reason or ""


def test_an_id_token_for_this_client_and_nonce_is_accepted(
    verifier: TokenVerifier, keys: Keys
) -> None:
    token = sign(keys.rsa, "RS256", aud=CLIENT, nonce=NONCE, azp=CLIENT)
    claims = verifier.verify_id_token(token, client_id=CLIENT, nonce=NONCE, now=NOW)
    assert claims["sub"] == "svc-1"


def test_an_id_token_is_refused_for_another_nonce_or_none(
    verifier: TokenVerifier, keys: Keys
) -> None:
    assert "nonce does not match" in _refusal(
        verifier, sign(keys.rsa, "RS256", aud=CLIENT, nonce="other")
    )
    assert "nonce" in _refusal(verifier, sign(keys.rsa, "RS256", aud=CLIENT))


def test_an_access_token_is_not_an_id_token(verifier: TokenVerifier, keys: Keys) -> None:
    # The broker's audience, not this client's: an access token cannot stand in for one.
    assert "wrong audience" in _refusal(verifier, sign(keys.rsa, "RS256", nonce=NONCE))


def test_azp_and_several_audiences(verifier: TokenVerifier, keys: Keys) -> None:
    assert "azp" in _refusal(verifier, sign(keys.rsa, "RS256", aud=CLIENT, nonce=NONCE, azp="x"))
    several = sign(keys.rsa, "RS256", aud=[CLIENT, "other"], nonce=NONCE)
    assert "several audiences" in _refusal(verifier, several)


def test_an_expired_id_token_is_refused(verifier: TokenVerifier, keys: Keys) -> None:
    token = sign(keys.rsa, "RS256", aud=CLIENT, nonce=NONCE, exp=int(NOW) - 3600)
    assert "expired" in _refusal(verifier, token)

"""A real OpenID Provider in a child process: panva's certified ``oidc-provider`` (tests/oidc).

:func:`start_provider` makes a fresh ES256 signing key, gives the private JWKS to the provider
and writes the public JWKS where the broker's ``auth.issuers`` reads it, so the broker trusts
exactly the tokens this provider signs. Accounts are login names with a tenant and roles; the
provider's development login form accepts any password for them.

Without node or the installed package (``make oidc-provider``) the caller's test skips with that
reason outside CI and fails in CI.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from tests.conftest import skip_or_fail

OIDC_DIR = Path(__file__).resolve().parents[1] / "oidc"
AUDIENCE = "https://broker.example.com/api"
CLIENT_ID = "compliance-console"
CLIENT_SECRET = "console-client-secret-for-tests-only-0123456789"


@dataclass
class OidcProvider:
    """A running provider: its issuer URL, the broker-side issuer config, and its process."""

    issuer: str
    jwks_file: Path
    process: subprocess.Popen[str]
    stderr_file: Path
    clients: list[dict[str, Any]] = field(default_factory=list)

    def issuer_config(self) -> dict[str, Any]:
        """This provider as one entry of the broker's ``auth.issuers``."""
        return {
            "issuer": self.issuer,
            "audience": AUDIENCE,
            "algorithms": ["ES256"],
            "jwks_file": str(self.jwks_file),
        }

    def stop(self) -> None:
        """Stop the provider process."""
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def start_provider(
    directory: Path, *, redirect_uris: list[str], accounts: dict[str, dict[str, Any]]
) -> OidcProvider:
    """Start a provider with one confidential client (``CLIENT_ID``) for ``redirect_uris``."""
    node = shutil.which("node")
    if node is None:
        skip_or_fail("node is not installed: the OIDC sign-in tests need it (nodejs package)")
    if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        skip_or_fail("tests/oidc is not installed: run `make oidc-provider`")
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private_jwk = json.loads(ECAlgorithm.to_jwk(key))
    public_jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    for jwk in (private_jwk, public_jwk):
        jwk.update(kid="test-key-1", alg="ES256", use="sig")
    jwks_file = directory / "public-jwks.json"
    jwks_file.write_text(json.dumps({"keys": [public_jwk]}), encoding="utf-8")
    clients = [
        {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": redirect_uris,
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_basic",
            "id_token_signed_response_alg": "ES256",
        }
    ]
    config = {
        "jwks": {"keys": [private_jwk]},
        "clients": clients,
        "cookie_key": "provider-cookie-key-for-tests-only",
        "resource": AUDIENCE,
        "resource_scope": "audit",
        "alg": "ES256",
        "accounts": accounts,
    }
    config_file = directory / "provider.json"
    config_file.write_text(json.dumps(config), encoding="utf-8")
    stderr_file = directory / "provider.stderr"
    with stderr_file.open("w") as stderr:
        process = subprocess.Popen(
            [node, str(OIDC_DIR / "provider.mjs"), str(config_file)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=OIDC_DIR,
        )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait(timeout=10)
        raise AssertionError(f"the OIDC provider did not start: {stderr_file.read_text()[-2000:]}")
    issuer = json.loads(line)["issuer"]
    return OidcProvider(issuer, jwks_file, process, stderr_file, clients)

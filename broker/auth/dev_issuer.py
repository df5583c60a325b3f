"""A development token issuer. NOT FOR PRODUCTION.

It exists so that one command starts a node a developer can call: it keeps an Ed25519 signing
key under ``<data_dir>/dev-issuer/`` and mints tokens for any tenant, subject and roles it is
asked for. Anyone who can read that directory, or run ``broker`` on the host, can therefore
become any tenant with any role. That is why it is off by default
(``[auth.dev_issuer] enabled = false``), why its issuer name ends in ``.invalid``, and why the
verifier logs a ``dev_issuer_enabled`` warning whenever it trusts it.

The key pair is created on first use: the private key is written to a temporary file with mode
0600 and then hard-linked into place, so two processes starting together never see a half
written key and the loser of the race simply loads the winner's key. An existing private key
readable by group or others is refused, as ssh refuses such keys.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from broker.auth.keys import TrustedIssuer, VerificationKey, trusted_issuer
from broker.auth.principal import Role, is_valid_tenant
from broker.config import AuthConfig, ConfigError, DevIssuerConfig

DIRECTORY: Final = "dev-issuer"
PRIVATE_KEY_FILE: Final = "private.pem"
PUBLIC_KEY_FILE: Final = "public.pem"


def jwk_thumbprint(ed25519_public: bytes) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of an Ed25519 public key given as raw bytes."""
    x = base64.urlsafe_b64encode(ed25519_public).rstrip(b"=").decode("ascii")
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class DevIssuer:
    """Mints EdDSA tokens for local development and tests. NOT FOR PRODUCTION (see module doc)."""

    def __init__(
        self,
        data_dir: Path,
        config: DevIssuerConfig | None = None,
        *,
        tenant_claim: str = "tenant",
        roles_claim: str = "roles",
    ) -> None:
        self._config = config or DevIssuerConfig()
        self._directory = data_dir / DIRECTORY
        self._tenant_claim = tenant_claim
        self._roles_claim = roles_claim
        self._lock = threading.Lock()
        self._private_key: ed25519.Ed25519PrivateKey | None = None

    @classmethod
    def from_auth_config(cls, config: AuthConfig, data_dir: Path) -> DevIssuer:
        """A dev issuer that puts tenant and roles in the claims the verifier reads."""
        return cls(
            data_dir,
            config.dev_issuer,
            tenant_claim=config.tenant_claim,
            roles_claim=config.roles_claim,
        )

    @property
    def issuer(self) -> str:
        """The ``iss`` of minted tokens."""
        return self._config.issuer

    @property
    def kid(self) -> str:
        """The RFC 7638 JWK thumbprint of the public key: stable across restarts, no registry."""
        raw = self.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return jwk_thumbprint(raw)

    def public_key(self) -> ed25519.Ed25519PublicKey:
        """The verification key (creating the key pair on first use)."""
        return self._signing_key().public_key()

    def public_key_pem(self) -> bytes:
        """The public key as PEM, for configuring it as a static key elsewhere."""
        return self.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def trusted_issuer(self) -> TrustedIssuer:
        """What the verifier needs to trust tokens from this issuer (EdDSA only)."""
        key = VerificationKey(self.kid, "EdDSA", self.public_key())
        return trusted_issuer(
            issuer=self._config.issuer,
            audience=self._config.audience,
            algorithms=frozenset({"EdDSA"}),
            keys=[key],
        )

    def mint(
        self,
        subject: str,
        tenant: str,
        roles: Iterable[Role | str],
        ttl_seconds: int = 3600,
        now: float | None = None,
    ) -> str:
        """Sign a token for ``subject`` in ``tenant`` with ``roles``, valid for ``ttl_seconds``.

        Arguments are checked so that a minted token is one the verifier accepts; a mistake
        surfaces here as ValueError rather than later as an opaque UNAUTHENTICATED.
        """
        if not subject:
            raise ValueError("subject must not be empty")
        if not is_valid_tenant(tenant):
            raise ValueError("tenant must match [A-Za-z0-9._-]{1,128}")
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        issued = int(time.time() if now is None else now)
        claims = {
            "iss": self._config.issuer,
            "aud": self._config.audience,
            "sub": subject,
            "iat": issued,
            "nbf": issued,
            "exp": issued + ttl_seconds,
            self._tenant_claim: tenant,
            self._roles_claim: [Role(role).value for role in roles],
        }
        return jwt.encode(claims, self._signing_key(), algorithm="EdDSA", headers={"kid": self.kid})

    def _signing_key(self) -> ed25519.Ed25519PrivateKey:
        with self._lock:
            if self._private_key is None:
                self._private_key = self._load_or_create()
            return self._private_key

    def _load_or_create(self) -> ed25519.Ed25519PrivateKey:
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self._directory / PRIVATE_KEY_FILE
        if not path.exists():
            self._create(path)
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"dev issuer key {path} is readable by others; chmod 600 it")
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(
                f"dev issuer key {path} cannot be loaded ({type(exc).__name__})"
            ) from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ConfigError(f"dev issuer key {path} is not an Ed25519 private key")
        return key

    def _create(self, path: Path) -> None:
        key = ed25519.Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # mkstemp creates the file with mode 0600 before any byte of the key is written.
        fd, temporary = tempfile.mkstemp(dir=self._directory, prefix=".private-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temporary, path)
            except FileExistsError:
                return  # another process won the race; its key is the one to use
        finally:
            Path(temporary).unlink(missing_ok=True)
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        (self._directory / PUBLIC_KEY_FILE).write_bytes(public)

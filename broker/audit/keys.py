"""Key material of the audit log: per-tenant digest keys and the log's checkpoint signing key.

Digest keys (choice: derived, not stored one per tenant)
---------------------------------------------------------
Each tenant's HMAC key is derived with HKDF-SHA256 from one *audit root key* (32 random bytes in
``<data_dir>/audit-root-key``, mode 0600): ``HKDF(root, salt="broker audit digest",
info="tenant:" + tenant)``. One file instead of one per tenant because replicas on PostgreSQL
must compute the same digest for the same tenant: a per-tenant file created lazily on each host
would race and diverge, whereas one root secret is distributed once like any other secret.
Tenant ids are restricted to ``[A-Za-z0-9._-]`` (``broker.auth.principal``), so ``info`` is
unambiguous. The derived keys live only in memory.

Digests are written ``hmac-sha256:<hex>`` so a later algorithm can be told apart.

Log signing key
---------------
An Ed25519 note signer in ``<data_dir>/audit-log-key`` (``PRIVATE+KEY+...`` text, mode 0600),
created on first start. Its key name is the log origin, as C2SP logs conventionally do, and its
public half (``vkey``) is what auditors configure to verify checkpoints offline.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Final, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker.audit.note import Signer

ROOT_KEY_FILE: Final = "audit-root-key"
LOG_KEY_FILE: Final = "audit-log-key"
DIGEST_PREFIX: Final = "hmac-sha256:"
_ROOT_KEY_BYTES: Final = 32
_SALT: Final = b"broker audit digest"


class DigestKeys(Protocol):
    """What :class:`~broker.audit.writer.AuditLog` needs: a keyed digest per tenant."""

    def digest(self, tenant: str, data: bytes) -> str:
        """``hmac-sha256:<hex>`` of ``data`` under ``tenant``'s audit key."""
        ...


def _write_secret(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 atomically; FileExistsError if another process won."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _read_secret(path: Path) -> str:
    if path.stat().st_mode & 0o077:
        raise PermissionError(f"{path} must not be readable by group or others (chmod 600)")
    return path.read_text(encoding="ascii").strip()


class TenantKeys:
    """Per-tenant HMAC keys derived from one root key (see the module docstring)."""

    def __init__(self, root_key: bytes) -> None:
        if len(root_key) != _ROOT_KEY_BYTES:
            raise ValueError(f"the audit root key must be {_ROOT_KEY_BYTES} bytes")
        self._root = root_key
        self._cache: dict[str, bytes] = {}

    @classmethod
    def load_or_create(cls, data_dir: Path) -> TenantKeys:
        """Read ``<data_dir>/audit-root-key``, creating it (0600) on first use."""
        path = data_dir / ROOT_KEY_FILE
        with contextlib.suppress(FileExistsError):  # another process created it first
            _write_secret(path, secrets.token_hex(_ROOT_KEY_BYTES) + "\n")
        try:
            return cls(bytes.fromhex(_read_secret(path)))
        except ValueError as exc:
            raise ValueError(f"{path} does not hold a 32-byte hex audit root key") from exc

    def tenant_key(self, tenant: str) -> bytes:
        """The derived HMAC key of ``tenant`` (cached; HKDF is cheap but not free)."""
        key = self._cache.get(tenant)
        if key is None:
            hkdf = HKDF(hashes.SHA256(), 32, salt=_SALT, info=b"tenant:" + tenant.encode())
            key = self._cache.setdefault(tenant, hkdf.derive(self._root))
        return key

    def digest(self, tenant: str, data: bytes) -> str:
        """``hmac-sha256:<hex>`` of ``data`` under the tenant's key."""
        mac = hmac.new(self.tenant_key(tenant), data, hashlib.sha256).hexdigest()
        return DIGEST_PREFIX + mac

    def __repr__(self) -> str:
        return "TenantKeys(<secret>)"


def load_or_create_log_signer(data_dir: Path, origin: str) -> Signer:
    """The checkpoint signer in ``<data_dir>/audit-log-key`` (0600), created on first use.

    A key whose name is not ``origin`` is refused: the verifier key name would no longer say
    which log it signs for, and receipts from two logs could be confused.
    """
    path = data_dir / LOG_KEY_FILE
    with contextlib.suppress(FileExistsError):  # another process created it first
        _write_secret(path, Signer.generate(origin).to_skey() + "\n")
    signer = Signer.from_skey(_read_secret(path))
    if signer.name != origin:
        raise ValueError(f"{path} holds the key of log {signer.name!r}, not {origin!r}")
    return signer

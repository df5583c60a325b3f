"""Per-tenant keys for the enforcement actions: hash (HMAC), encrypt (AES-GCM), token vault.

One 256-bit master key lives in ``<data_dir>/keys/enforcement.key`` (created on first use, mode
0600, never logged). Each tenant's keys are derived from it with HKDF-SHA256, with the tenant
and the purpose in the ``info`` string, so that:

- a pseudonym (``hash``) is stable within a tenant and unlinkable across tenants;
- a ciphertext of one tenant cannot be opened with another tenant's key;
- the hash, encryption and vault keys of one tenant are independent of each other.

The key id written into every ciphertext is the first 8 bytes of SHA-256 over the master key,
hex: it names the master key version without revealing it. Rotation (issue 6's keyring) adds
new master keys; ciphertexts name the one they need.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker.config import ConfigError

Purpose = Literal["hash", "encrypt", "vault", "endpoint-secret"]
"""``endpoint-secret``: sealing vendors' endpoint API keys at rest (``broker.registry.secrets``),
derived for the *vendor's* tenant, so it is independent of every buyer-facing key."""
KEY_BYTES = 32


@dataclass
class TenantKeys:
    """Derives and caches per-tenant, per-purpose keys from one master key."""

    master: bytes
    _cache: dict[tuple[str, str], bytes] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if len(self.master) != KEY_BYTES:
            raise ConfigError(f"the enforcement master key must be {KEY_BYTES} bytes")

    def __repr__(self) -> str:
        return f"TenantKeys(key_id={self.key_id!r})"

    @property
    def key_id(self) -> str:
        """A public identifier of the master key (first 8 bytes of its SHA-256, hex)."""
        return hashlib.sha256(self.master).hexdigest()[:16]

    def key(self, tenant: str, purpose: Purpose) -> bytes:
        """The tenant's 256-bit key for ``purpose``."""
        cache_key = (tenant, purpose)
        with self._lock:
            cached = self._cache.get(cache_key)
        if cached is not None:
            return cached
        derived = HKDF(
            algorithm=hashes.SHA256(),
            length=KEY_BYTES,
            salt=b"model-broker/enforcement/v1",
            info=f"{purpose}\x00{tenant}".encode(),
        ).derive(self.master)
        with self._lock:
            self._cache[cache_key] = derived
        return derived

    @classmethod
    def load_or_create(cls, data_dir: Path) -> TenantKeys:
        """Read the master key under ``data_dir/keys``, creating it (0600) on first use."""
        path = data_dir / "keys" / "enforcement.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _create_secret_file(path, os.urandom(KEY_BYTES))
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(f"{path} is readable by other users (mode {mode:o}); chmod 600 it")
        data = path.read_bytes()
        if len(data) != KEY_BYTES:
            raise ConfigError(f"{path} is not a {KEY_BYTES}-byte key; restore it from backup")
        return cls(data)


def _create_secret_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new 0600 file; if another process won the race, keep its file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        temporary.unlink()

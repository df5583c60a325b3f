"""The small cryptographic core of retention: AES-256-GCM with bound context, nothing else.

Every encryption here binds a *context* as GCM associated data, so a blob only decrypts where
it was written: a record's ciphertext names its tenant, record id, call id and kind; a wrapped
data key names its tenant, record id and key version; a wrapped tenant key names its tenant and
version. Moving a blob to another row (another tenant's, say) makes its tag fail instead of
decrypting under the wrong owner. Contexts are length-prefixed fields after a purpose label, so
no two different field lists encode to the same bytes.

Blobs are ``nonce (12 bytes) || ciphertext || tag (16 bytes)``. Nonces are random: each data key
encrypts exactly one payload, and a KEK wraps far fewer than the 2**32 messages after which
random 96-bit nonces become a concern (NIST SP 800-38D, section 8.3).
"""

from __future__ import annotations

import os
import struct
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16


class DecryptError(Exception):
    """A blob did not authenticate under the given key and context (wrong key, or tampered)."""


def new_key() -> bytes:
    """A fresh random 256-bit key."""
    return os.urandom(KEY_BYTES)


def context(label: str, *fields: str | int) -> bytes:
    """Encode ``label`` and ``fields`` unambiguously as associated data."""
    parts = [label.encode("ascii"), b"\x00"]
    for value in fields:
        raw = str(value).encode("utf-8")
        parts.append(struct.pack(">I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM encrypt ``plaintext`` under ``key`` with a random nonce bound to ``aad``."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Decrypt a blob made by :func:`seal`; DecryptError if it does not authenticate."""
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise DecryptError("blob is too short to hold a nonce and a tag")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag as exc:
        raise DecryptError("authentication tag mismatch") from exc

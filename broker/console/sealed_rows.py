"""Rows found and opened by a random id that only the browser holds.

Console sessions and pending OIDC sign-ins are kept the same way: the row's key is the
SHA-256 of the id (so the table lists no id anyone could present) and its content is sealed
with AES-256-GCM under a key derived from the id (HKDF-SHA256, a distinct ``info`` per kind of
row), with the id hash as associated data (a sealed value moved to another row does not open).
The row alone is useless, and there is no key for the operator to manage: any console process
that shares the database and gets the id can open it.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_NONCE_BYTES: Final = 12
#: Ids longer than this are refused before any hashing (a browser's cookie, not a payload).
MAX_ID_LENGTH: Final = 128


def new_id() -> str:
    """A fresh random id for the browser (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def plausible_id(row_id: str) -> bool:
    """Whether ``row_id`` could be one of ours: present, ASCII and not oversized."""
    return 0 < len(row_id) <= MAX_ID_LENGTH and row_id.isascii()


def id_hash(row_id: str) -> bytes:
    """The row's key: SHA-256 of the id."""
    return hashlib.sha256(row_id.encode("ascii")).digest()


def _key(row_id: str, info: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info)
    return hkdf.derive(row_id.encode("ascii"))


def seal(row_id: str, info: bytes, plain: bytes) -> bytes:
    """``plain`` sealed for the row of ``row_id``: nonce, then ciphertext and tag."""
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return nonce + AESGCM(_key(row_id, info)).encrypt(nonce, plain, id_hash(row_id))


def unseal(row_id: str, info: bytes, sealed: bytes) -> bytes | None:
    """What :func:`seal` sealed, or None if the row was altered or belongs to another id."""
    try:
        return AESGCM(_key(row_id, info)).decrypt(
            sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], id_hash(row_id)
        )
    except InvalidTag:
        return None

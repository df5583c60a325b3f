"""What each action does to one value: redact, mask, hash, encrypt (pure functions).

Every function takes the original value and returns the replacement; none logs or raises with
the value in the message. Numbers and booleans are turned into text for mask and hash (their
JSON text), because a masked or pseudonymised number is no longer a number.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.errors import InvalidArgument

ENCRYPTED_PREFIX = "enc:v1:"
HASH_PREFIX = "hash:"
NONCE_BYTES = 12


def redact_marker(labels: frozenset[str] | tuple[str, ...]) -> str:
    """The fixed marker that replaces a redacted value: it names the labels, not the value."""
    names = ",".join(sorted(labels)) or "field"
    return f"[REDACTED:{names}]"


def value_text(value: Any) -> str:
    """The text an action works on: strings as they are, other scalars as their JSON text."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def mask(text: str, *, keep_last: int, char: str) -> str:
    """Hide all but the last characters; separators (space, ``-``, ``.``) keep their place.

    At most half of the text is ever left visible, so masking a short value with
    ``keep_last=4`` does not reveal it whole.
    """
    visible = min(keep_last, len(text) // 2)
    visible_from = len(text) - visible
    return "".join(
        ch if index >= visible_from or ch in " -." else char for index, ch in enumerate(text)
    )


def pseudonym(key: bytes, value: Any) -> str:
    """A keyed, irreversible pseudonym (HMAC-SHA256, 128 bits shown), stable per tenant key."""
    digest = hmac.new(key, orjson.dumps(value), hashlib.sha256).digest()[:16]
    return HASH_PREFIX + base64.b32encode(digest).decode().rstrip("=").lower()


def encrypt_value(key: bytes, key_id: str, tenant: str, value: Any) -> str:
    """AES-256-GCM ciphertext of the value's JSON, tenant bound as associated data.

    Format ``enc:v1:<key id>:<base64url(nonce || ciphertext || tag)>``: versioned, and naming
    the key it needs so that rotated keys still decrypt.
    """
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, orjson.dumps(value), _aad(tenant, key_id))
    body = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
    return f"{ENCRYPTED_PREFIX}{key_id}:{body}"


def decrypt_value(key: bytes, key_id: str, tenant: str, text: str) -> Any:
    """Open a ciphertext made by ``encrypt_value`` for the same tenant and key.

    InvalidArgument (without the text) when it is malformed, for another tenant or another key.
    """
    if not text.startswith(ENCRYPTED_PREFIX):
        raise InvalidArgument("not an encrypted value")
    kid, _, body = text[len(ENCRYPTED_PREFIX) :].partition(":")
    if kid != key_id:
        raise InvalidArgument("encrypted value names an unknown key")
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        plain = AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(tenant, kid))
        return orjson.loads(plain)
    except (ValueError, InvalidTag, orjson.JSONDecodeError) as exc:
        raise InvalidArgument("encrypted value cannot be opened with this tenant's key") from exc


def _aad(tenant: str, key_id: str) -> bytes:
    return f"model-broker/encrypt/v1\x00{tenant}\x00{key_id}".encode()

"""A retention root key inside a PKCS#11 token: wrapping happens in the HSM, the key never leaves.

Tested against SoftHSM2 (Debian ``softhsm2``; PyPI ``python-pkcs11``). The root key is an AES-256
secret key object found by label, created non-extractable and sensitive, so the broker can ask
the token to encrypt and decrypt with it but can never read it. Wrapping is ``CKM_AES_GCM``
with a random 96-bit nonce generated here and the context bound as associated data, so blobs
have the same layout as :class:`~broker.retention.keyring.LocalKeyWrapper`'s (nonce || ct || tag)
and the same context rules apply.

A token session is not safe for concurrent use, so calls are serialised by a lock; tenant KEKs
are cached unwrapped by the keyring, so the token sees about one call per tenant key version
per process, not one per retained record.

Configuration (``[retention.pkcs11]``): ``library`` (path of the PKCS#11 module, for example
``/usr/lib/softhsm/libsofthsm2.so``), ``token_label``, ``key_label``, and ``pin_env``, the name
of the environment variable holding the user PIN (never the PIN itself in the file).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.mechanisms import GCMParams

from broker.config import Pkcs11Config
from broker.retention import crypto
from broker.retention.keyring import RootKeyError, UnwrapError


class Pkcs11KeyWrapper:
    """:class:`~broker.retention.keyring.KeyWrapper` over an AES key in a PKCS#11 token."""

    def __init__(self, session: Any, key: Any, *, token_label: str, key_label: str) -> None:
        self._session = session
        self._key = key
        self._key_id = f"pkcs11:{token_label}/{key_label}"
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        library: str,
        token_label: str,
        key_label: str,
        pin: str,
        *,
        create: bool = False,
    ) -> Pkcs11KeyWrapper:
        """Log in to the token and find the key (``create=True`` generates it if absent).

        RootKeyError with a precise message when the library, the token, the PIN or the key
        is wrong. Creating is explicit so a mistyped label never silently starts a new key.
        """
        try:
            lib = pkcs11.lib(library)
        except (RuntimeError, OSError) as exc:
            raise RootKeyError(f"cannot load PKCS#11 library {library}: {exc}") from exc
        try:
            token = lib.get_token(token_label=token_label)
            try:
                session = token.open(user_pin=pin, rw=True)
            except pkcs11.UserAlreadyLoggedIn:
                # PKCS#11 logins are per process: another session of ours is logged in already.
                session = token.open(rw=True)
        except pkcs11.NoSuchToken as exc:
            raise RootKeyError(f"PKCS#11 token {token_label!r} not found") from exc
        except pkcs11.PKCS11Error as exc:
            raise RootKeyError(
                f"cannot log in to PKCS#11 token {token_label!r} ({type(exc).__name__})"
            ) from exc
        try:
            key = session.get_key(
                object_class=ObjectClass.SECRET_KEY, key_type=KeyType.AES, label=key_label
            )
        except pkcs11.NoSuchKey as exc:
            if not create:
                session.close()
                raise RootKeyError(
                    f"PKCS#11 token {token_label!r} holds no AES key labelled {key_label!r}"
                ) from exc
            key = session.generate_key(
                KeyType.AES,
                crypto.KEY_BYTES * 8,
                label=key_label,
                store=True,
                template={
                    Attribute.EXTRACTABLE: False,
                    Attribute.SENSITIVE: True,
                    Attribute.ENCRYPT: True,
                    Attribute.DECRYPT: True,
                },
            )
        except pkcs11.MultipleObjectsReturned as exc:
            session.close()
            raise RootKeyError(
                f"PKCS#11 token {token_label!r} holds several keys labelled {key_label!r}"
            ) from exc
        return cls(session, key, token_label=token_label, key_label=key_label)

    @classmethod
    def from_config(cls, config: Pkcs11Config, environ: Mapping[str, str]) -> Pkcs11KeyWrapper:
        """Open the token named by ``[retention.pkcs11]``, PIN from ``pin_env``."""
        pin = environ.get(config.pin_env)
        if not pin:
            raise RootKeyError(f"retention.pkcs11.pin_env names {config.pin_env}, which is not set")
        return cls.open(str(config.library), config.token_label, config.key_label, pin)

    @property
    def key_id(self) -> str:
        """``pkcs11:<token label>/<key label>``."""
        return self._key_id

    def wrap(self, key: bytes, context: bytes) -> bytes:
        """AES-GCM inside the token."""
        nonce = os.urandom(crypto.NONCE_BYTES)
        with self._lock:
            sealed = self._key.encrypt(
                key, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, context, 128)
            )
        return nonce + bytes(sealed)

    def unwrap(self, blob: bytes, context: bytes) -> bytes:
        """Open a blob from :meth:`wrap`; UnwrapError if the token refuses it."""
        if len(blob) < crypto.NONCE_BYTES + crypto.TAG_BYTES:
            raise UnwrapError("blob is too short to hold a nonce and a tag")
        nonce, sealed = blob[: crypto.NONCE_BYTES], blob[crypto.NONCE_BYTES :]
        try:
            with self._lock:
                plain = self._key.decrypt(
                    sealed,
                    mechanism=Mechanism.AES_GCM,
                    mechanism_param=GCMParams(nonce, context, 128),
                )
        except pkcs11.PKCS11Error as exc:
            raise UnwrapError(f"the token refused to unwrap ({type(exc).__name__})") from exc
        return bytes(plain)

    def close(self) -> None:
        """Log out and close the session."""
        with self._lock:
            self._session.close()

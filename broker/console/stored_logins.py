"""Started OIDC sign-ins kept in the database, so the issuer may send the browser back to any
console process (behind a load balancer) or to one restarted meanwhile.

As for sessions (:mod:`broker.console.stored_sessions`), a row is keyed by the SHA-256 of the
random id the browser holds, and its content (state, nonce, PKCE verifier, redirect URI) is
sealed with AES-256-GCM under a key derived from that id: the table alone cannot complete a
sign-in. A row is *taken* with ``DELETE ... RETURNING``, so of two answers racing for one
sign-in, on one process or two, only one finds it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from typing import Final

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlmodel import SQLModel

from broker.console.oidc import PENDING_SECONDS, PendingLogin
from broker.storage.db import for_writes

_SEAL_INFO: Final = b"broker console oidc login v1"
_NONCE_BYTES: Final = 12

console_oidc_logins = sa.Table(
    "console_oidc_logins",
    SQLModel.metadata,
    sa.Column("id_hash", sa.LargeBinary(), primary_key=True),
    sa.Column("sealed", sa.LargeBinary(), nullable=False),
    sa.Column("started_at", sa.Float(), nullable=False),
    sa.Index("ix_console_oidc_logins_started_at", "started_at"),
)


def _id_hash(login_id: str) -> bytes:
    return hashlib.sha256(login_id.encode("ascii")).digest()


def _key(login_id: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SEAL_INFO)
    return hkdf.derive(login_id.encode("ascii"))


class StoredPendingLogins:
    """Pending sign-ins in ``console_oidc_logins``; the same surface as ``PendingLogins``."""

    def __init__(self, engine: sa.Engine, *, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._clock = clock

    def put(self, pending: PendingLogin) -> str:
        """Keep ``pending`` (and purge the stale ones); the id for the browser's cookie."""
        login_id = secrets.token_urlsafe(32)
        id_hash = _id_hash(login_id)
        nonce = secrets.token_bytes(_NONCE_BYTES)
        plain = json.dumps(dataclasses.asdict(pending)).encode()
        sealed = nonce + AESGCM(_key(login_id)).encrypt(nonce, plain, id_hash)
        stale = self._clock() - PENDING_SECONDS
        with for_writes(self._engine).begin() as conn:
            conn.execute(
                console_oidc_logins.delete().where(console_oidc_logins.c.started_at <= stale)
            )
            conn.execute(
                console_oidc_logins.insert().values(
                    id_hash=id_hash, sealed=sealed, started_at=pending.started_at
                )
            )
        return login_id

    def take(self, login_id: str | None) -> PendingLogin | None:
        """The pending sign-in (deleted as it is read: once only), if still fresh."""
        if not login_id or not login_id.isascii() or len(login_id) > 128:
            return None
        id_hash = _id_hash(login_id)
        with for_writes(self._engine).begin() as conn:
            row = conn.execute(
                console_oidc_logins.delete()
                .where(console_oidc_logins.c.id_hash == id_hash)
                .returning(console_oidc_logins.c.sealed)
            ).first()
        if row is None:
            return None
        sealed = bytes(row.sealed)
        try:
            plain = AESGCM(_key(login_id)).decrypt(
                sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], id_hash
            )
        except InvalidTag:
            return None
        pending = PendingLogin(**json.loads(plain))
        if pending.started_at + PENDING_SECONDS <= self._clock():
            return None
        return pending

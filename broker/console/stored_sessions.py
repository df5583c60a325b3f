"""Console sessions kept in the database: they survive a restart and serve several consoles.

The browser holds a random session id (256 bits); the ``console_sessions`` row is found by the
id's SHA-256 and holds the officer's bearer token sealed (AES-256-GCM) under a key derived from
the id itself (HKDF-SHA256; :mod:`broker.console.sealed_rows`). So the row alone is useless:
someone who reads the table (or a backup of it) learns neither a session id to present nor a
token to replay, and needs no key the operator must manage; any console process that shares the
database and gets the cookie can open it. The CSRF token is derived from the id too (HMAC), so
it needs no column either.

Sign-out deletes the row, which ends the session in every console process at once (server-side
revocation). A session ends ``ttl`` after sign-in or at its token's expiry, whichever is first;
each read checks the time and verifies the token again with the broker's rules (cached), so a
token from an issuer no longer trusted ends its session. Expired rows are purged on sign-in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Final

import sqlalchemy as sa
from sqlmodel import SQLModel

from broker.auth.principal import Principal
from broker.auth.tokens import TokenVerifier
from broker.console import sealed_rows
from broker.console.sessions import Session
from broker.errors import Unauthenticated
from broker.logging import get_logger
from broker.storage.db import for_writes

_log = get_logger(__name__)
_SEAL_INFO: Final = b"broker console session token v1"
_CSRF_INFO: Final = b"broker console session csrf v1"

console_sessions = sa.Table(
    "console_sessions",
    SQLModel.metadata,
    sa.Column("id_hash", sa.LargeBinary(), primary_key=True),
    sa.Column("sealed_token", sa.LargeBinary(), nullable=False),
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("expires_at", sa.Float(), nullable=False),
    sa.Index("ix_console_sessions_expires_at", "expires_at"),
)


def _csrf(session_id: str) -> str:
    digest = hmac.new(session_id.encode("ascii"), _CSRF_INFO, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class StoredSessionStore:
    """Sessions in ``console_sessions``: same surface as the in-memory ``SessionStore``."""

    def __init__(
        self,
        engine: sa.Engine,
        verifier: TokenVerifier,
        ttl_seconds: float,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._verifier = verifier
        self._ttl = ttl_seconds
        self.clock = clock

    def create(self, token: str, principal: Principal) -> Session:
        """Store a new session for a verified token; purge the expired ones on the way."""
        session_id = sealed_rows.new_id()
        now = self.clock()
        expires_at = min(now + self._ttl, principal.expires_at)
        sealed = sealed_rows.seal(session_id, _SEAL_INFO, token.encode())
        with for_writes(self._engine).begin() as conn:
            conn.execute(console_sessions.delete().where(console_sessions.c.expires_at <= now))
            conn.execute(
                console_sessions.insert().values(
                    id_hash=sealed_rows.id_hash(session_id),
                    sealed_token=sealed,
                    created_at=now,
                    expires_at=expires_at,
                )
            )
        return Session(session_id, token, principal, _csrf(session_id), expires_at)

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, or None (an expired or refused one is deleted)."""
        if session_id is None or not sealed_rows.plausible_id(session_id):
            return None
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(console_sessions.c.sealed_token, console_sessions.c.expires_at).where(
                    console_sessions.c.id_hash == sealed_rows.id_hash(session_id)
                )
            ).first()
        if row is None:
            return None
        if row.expires_at <= self.clock():
            self.delete(session_id)
            return None
        plain = sealed_rows.unseal(session_id, _SEAL_INFO, bytes(row.sealed_token))
        if plain is None:
            _log.warning("console_session_unreadable")  # a tampered row: end it
            self.delete(session_id)
            return None
        token = plain.decode()
        try:
            principal = self._verifier.verify(token, now=self.clock())
        except Unauthenticated as exc:
            _log.info("console_session_token_refused", reason=exc.log_reason or exc.message)
            self.delete(session_id)
            return None
        return Session(session_id, token, principal, _csrf(session_id), float(row.expires_at))

    def delete(self, session_id: str | None) -> None:
        """End a session in every console process (sign-out, or the broker refused its token)."""
        if session_id is not None and sealed_rows.plausible_id(session_id):
            with for_writes(self._engine).begin() as conn:
                conn.execute(
                    console_sessions.delete().where(
                        console_sessions.c.id_hash == sealed_rows.id_hash(session_id)
                    )
                )

"""Started OIDC sign-ins kept in the database, so the issuer may send the browser back to any
console process (behind a load balancer) or to one restarted meanwhile.

As for sessions, a row is keyed by the SHA-256 of the random id the browser holds, and its
content (state, nonce, PKCE verifier, redirect URI) is sealed under a key derived from that id
(:mod:`broker.console.sealed_rows`): the table alone cannot complete a sign-in. A row is
*taken* with ``DELETE ... RETURNING``, so of two answers racing for one sign-in, on one process
or two, only one finds it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Final

import sqlalchemy as sa
from sqlmodel import SQLModel

from broker.console import sealed_rows
from broker.console.oidc import PENDING_SECONDS, PendingLogin
from broker.storage.db import for_writes

_SEAL_INFO: Final = b"broker console oidc login v1"

console_oidc_logins = sa.Table(
    "console_oidc_logins",
    SQLModel.metadata,
    sa.Column("id_hash", sa.LargeBinary(), primary_key=True),
    sa.Column("sealed", sa.LargeBinary(), nullable=False),
    sa.Column("started_at", sa.Float(), nullable=False),
    sa.Index("ix_console_oidc_logins_started_at", "started_at"),
)


class StoredPendingLogins:
    """Pending sign-ins in ``console_oidc_logins``; the same surface as ``PendingLogins``."""

    def __init__(self, engine: sa.Engine, *, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._clock = clock

    def put(self, pending: PendingLogin) -> str:
        """Keep ``pending`` (and purge the stale ones); the id for the browser's cookie."""
        login_id = sealed_rows.new_id()
        plain = json.dumps(dataclasses.asdict(pending)).encode()
        sealed = sealed_rows.seal(login_id, _SEAL_INFO, plain)
        stale = self._clock() - PENDING_SECONDS
        with for_writes(self._engine).begin() as conn:
            conn.execute(
                console_oidc_logins.delete().where(console_oidc_logins.c.started_at <= stale)
            )
            conn.execute(
                console_oidc_logins.insert().values(
                    id_hash=sealed_rows.id_hash(login_id),
                    sealed=sealed,
                    started_at=pending.started_at,
                )
            )
        return login_id

    def take(self, login_id: str | None) -> PendingLogin | None:
        """The pending sign-in (deleted as it is read: once only), if still fresh."""
        if login_id is None or not sealed_rows.plausible_id(login_id):
            return None
        with for_writes(self._engine).begin() as conn:
            row = conn.execute(
                console_oidc_logins.delete()
                .where(console_oidc_logins.c.id_hash == sealed_rows.id_hash(login_id))
                .returning(console_oidc_logins.c.sealed)
            ).first()
        if row is None:
            return None
        plain = sealed_rows.unseal(login_id, _SEAL_INFO, bytes(row.sealed))
        if plain is None:
            return None
        pending = PendingLogin(**json.loads(plain))
        if pending.started_at + PENDING_SECONDS <= self._clock():
            return None
        return pending

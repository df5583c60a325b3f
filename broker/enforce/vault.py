"""The token vault: values swapped for tokens, kept encrypted until the call is over.

``tokenize`` replaces a value with a token the model can carry through text (``TKN-`` and 20
Crockford base32 characters: no character a model or a tokenizer is likely to split or change).
The broker restores a token in the answer only when it was issued for the same tenant **and**
the same scope (the call id), so a token that leaks into another tenant's call, or that a model
invents, is never resolved to someone's data.

Entries live in the ``vault_tokens`` table, sealed with AES-256-GCM under the tenant's vault key
(token, tenant and scope bound as associated data), and expire after a TTL; expired entries are
never returned and are deleted by ``purge_expired`` (run by the retention scheduler).

The call path splits ``store`` in two, to keep database work off the hot path without weakening
anything: ``seal`` encrypts the rows, which the caller commits in the same transaction as its
audit intent (``SealedTokens.companion``: durable before the request leaves, as with ``store``,
for the price of a few rows in a commit that happens anyway), and the answer of the same call is
restored from that ``SealedTokens`` (``resolve(..., issued=...)``) instead of reading back the
rows it just wrote. Every token of a call's scope is in its ``SealedTokens`` (a scope is one
call id and the call seals once), so the answer is the one the table would give: same tenant,
same scope, unexpired by the same clock.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlmodel import SQLModel

from broker.audit.store import Companion
from broker.enforce.keys import TenantKeys
from broker.errors import Unavailable

_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
TOKEN_RE: Final = re.compile(r"TKN-[0-9A-HJKMNP-TV-Z]{20}")
_NONCE_BYTES: Final = 12

vault_tokens = sa.Table(
    "vault_tokens",
    SQLModel.metadata,
    sa.Column("token", sa.String(24), nullable=False),
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("scope", sa.String(64), nullable=False),
    sa.Column("sealed", sa.LargeBinary, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("token", name="pk_vault_tokens"),
    sa.Index("ix_vault_tokens_expires_at", "expires_at"),
)


# Statements built once: constructing and cache-keying a SQLAlchemy expression on every call
# cost more CPU than the SQLite round trip it describes (one store and one resolve per call).
_INSERT: Final = vault_tokens.insert()
_RESOLVE: Final = sa.select(vault_tokens).where(
    vault_tokens.c.token.in_(sa.bindparam("tokens", expanding=True)),
    vault_tokens.c.tenant == sa.bindparam("tenant"),
    vault_tokens.c.scope == sa.bindparam("scope"),
    vault_tokens.c.expires_at > sa.bindparam("now", type_=sa.Float()),
)


def new_token() -> str:
    """A fresh random token (100 bits)."""
    value = int.from_bytes(os.urandom(13), "big") >> 4
    chars = [_CROCKFORD[(value >> (5 * i)) & 31] for i in range(20)]
    return "TKN-" + "".join(reversed(chars))


@dataclass(frozen=True, slots=True)
class PendingToken:
    """A token issued during enforcement, not yet stored."""

    token: str
    value: Any


@dataclass(frozen=True, slots=True)
class SealedTokens:
    """One scope's tokens: the sealed ``vault_tokens`` rows, and the values for this call.

    ``values`` never leave the process; only ``rows`` (ciphertext) are written.
    """

    tenant: str
    scope: str
    expires_at: float
    rows: tuple[tuple[str, str, str, bytes, float], ...] = field(repr=False)
    values: Mapping[str, Any] = field(repr=False)  # plaintext: never in a repr or a log

    def companion(self) -> tuple[Companion, ...]:
        """The rows as audit companions (none when the call issued no token)."""
        return (Companion(vault_tokens, self.rows),) if self.rows else ()


class TokenVault:
    """Stores and resolves tokens for (tenant, scope) with a TTL."""

    def __init__(
        self,
        engine: sa.Engine,
        keys: TenantKeys,
        *,
        ttl_seconds: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._keys = keys
        self._ttl = ttl_seconds
        self._clock = clock

    def seal(self, tenant: str, scope: str, pending: Iterable[PendingToken]) -> SealedTokens:
        """Encrypt the tokens of one scope for the table; nothing is written yet."""
        expires = self._clock() + self._ttl
        items = list(pending)
        if not items:
            return SealedTokens(tenant, scope, expires, (), {})
        cipher = AESGCM(self._keys.key(tenant, "vault"))
        rows = []
        for item in items:
            nonce = os.urandom(_NONCE_BYTES)
            sealed = cipher.encrypt(
                nonce, orjson.dumps(item.value), _aad(item.token, tenant, scope)
            )
            rows.append((item.token, tenant, scope, nonce + sealed, expires))
        values = {item.token: item.value for item in items}
        return SealedTokens(tenant, scope, expires, tuple(rows), values)

    def store(self, tenant: str, scope: str, pending: Iterable[PendingToken]) -> SealedTokens:
        """Seal and store the tokens of one call in one transaction (Unavailable on failure)."""
        sealed = self.seal(tenant, scope, pending)
        if not sealed.rows:
            return sealed
        names = [column.name for column in vault_tokens.columns]
        try:
            with self._engine.begin() as conn:
                conn.execute(_INSERT, [dict(zip(names, row, strict=True)) for row in sealed.rows])
        except sa.exc.SQLAlchemyError as exc:
            raise Unavailable("the token vault cannot be written; nothing was sent") from exc
        return sealed

    def resolve(
        self,
        tenant: str,
        scope: str,
        tokens: Iterable[str],
        *,
        issued: SealedTokens | None = None,
    ) -> Mapping[str, Any]:
        """The original values of ``tokens`` issued for this tenant and scope, unexpired.

        Tokens of another tenant or scope, expired ones and unknown ones are simply absent.
        ``issued``: every token of this scope, as sealed by the caller (whose commit wrote
        them); the answer then comes from it instead of the table (see the module docstring).
        """
        wanted = sorted(set(tokens))
        if not wanted:
            return {}
        if issued is not None:
            if (issued.tenant, issued.scope) != (tenant, scope):
                raise ValueError("issued tokens belong to another tenant or scope")
            if self._clock() >= issued.expires_at:
                return {}
            return {t: issued.values[t] for t in wanted if t in issued.values}
        params = {"tokens": wanted, "tenant": tenant, "scope": scope, "now": self._clock()}
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(_RESOLVE, params).all()
        except sa.exc.SQLAlchemyError as exc:
            raise Unavailable("the token vault cannot be read") from exc
        cipher = AESGCM(self._keys.key(tenant, "vault"))
        found: dict[str, Any] = {}
        for row in rows:
            sealed: bytes = row.sealed
            try:
                plain = cipher.decrypt(
                    sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], _aad(row.token, tenant, scope)
                )
            except InvalidTag:
                continue  # tampered row: never resolve it
            found[row.token] = orjson.loads(plain)
        return found

    def purge_expired(self) -> int:
        """Delete expired entries; returns how many were deleted."""
        with self._engine.begin() as conn:
            result = conn.execute(
                vault_tokens.delete().where(vault_tokens.c.expires_at <= self._clock())
            )
        return int(result.rowcount or 0)


def _aad(token: str, tenant: str, scope: str) -> bytes:
    return f"model-broker/vault/v1\x00{token}\x00{tenant}\x00{scope}".encode()

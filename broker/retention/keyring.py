"""Tenant key-encryption keys (KEKs), versioned, wrapped by one root key.

Three layers of keys, so that each kind of deletion costs one small write:

    root key (file, environment variable, or an HSM via PKCS#11)     never in the database
      └── tenant KEK, version N   (retention_tenant_keys, wrapped by the root key)
            └── record data key    (retention_records.wrapped_key, wrapped by the tenant KEK)
                  └── payload      (retention_records.ciphertext)

- Deleting a record deletes its wrapped data key: the ciphertext left in a WAL file or a backup
  can no longer be opened by anyone, even with the root key.
- Erasing a tenant also deletes all of its KEK versions, which makes every data key of that
  tenant still sitting in an old backup unusable too.
- Rotating a tenant adds version N+1; new records use it, old records keep naming the version
  that wrapped them and stay readable. ``RetentionStore.rewrap`` moves old records to the
  current version, after which ``destroy_unused_versions`` can delete the old KEKs. Only then is
  a data key recovered from a backup useless; the rotation period bounds that exposure.

The root key stands behind the :class:`KeyWrapper` protocol, so a KMS or an HSM can hold it
(see :mod:`broker.retention.pkcs11`). The database keeps a *check blob* (a constant wrapped by
the root key) so that :meth:`Keyring.open` tells "wrong root key" (refuse to start, change
nothing) from "corrupt tenant key" (the check opens, a tenant key does not). Unwrapped KEKs are
cached in memory keyed by their wrapped bytes, so a key deleted by another replica is never
used again here even while the cache still holds it.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from broker.config import ConfigError
from broker.retention import crypto
from broker.retention.tables import retention_keyring, retention_records, retention_tenant_keys
from broker.storage.db import for_writes

_CHECK_PLAINTEXT: Final = b"broker retention keyring check v1".ljust(crypto.KEY_BYTES, b"\x00")
_CHECK_CONTEXT: Final = crypto.context("broker/retention/keyring-check/v1")
_CACHE_LIMIT: Final = 4096


class UnwrapError(Exception):
    """A KeyWrapper could not unwrap a blob: wrong root key, or the blob is damaged."""


class RootKeyError(ConfigError):
    """The root key is missing, unreadable or not the one that wrapped the stored keys.

    A ConfigError, so ``broker serve`` refuses to start with this message and exit status 2.
    """


class KeyringCorrupt(Exception):
    """The root key is right (the check blob opens) but a stored tenant key does not unwrap."""


class KeyWrapper(Protocol):
    """Something that holds the root key and wraps and unwraps keys with it.

    Implementations: :class:`LocalKeyWrapper` (the key in process memory) and
    :class:`~broker.retention.pkcs11.Pkcs11KeyWrapper` (the key never leaves the token).
    ``context`` must be bound as associated data. ``key_id`` names the root key without
    revealing it; it is stored with the check blob and shown in error messages.
    """

    @property
    def key_id(self) -> str:
        """A stable, non-secret name of the root key."""
        ...

    def wrap(self, key: bytes, context: bytes) -> bytes:
        """Encrypt ``key`` under the root key, bound to ``context``."""
        ...

    def unwrap(self, blob: bytes, context: bytes) -> bytes:
        """Decrypt a blob made by :meth:`wrap`; UnwrapError if it does not authenticate."""
        ...


class LocalKeyWrapper:
    """The root key in memory, AES-256-GCM wrapping. Load it with :mod:`.rootkey`."""

    def __init__(self, root_key: bytes) -> None:
        if len(root_key) != crypto.KEY_BYTES:
            raise RootKeyError(f"the retention root key must be {crypto.KEY_BYTES} bytes")
        self._key = root_key
        digest = hashlib.sha256(b"broker retention root key id\x00" + root_key).hexdigest()
        self._key_id = f"local:{digest[:16]}"

    @property
    def key_id(self) -> str:
        """``local:`` and 16 hex digits of a labelled SHA-256 of the key."""
        return self._key_id

    def wrap(self, key: bytes, context: bytes) -> bytes:
        """AES-256-GCM under the root key."""
        return crypto.seal(self._key, key, context)

    def unwrap(self, blob: bytes, context: bytes) -> bytes:
        """Open a blob from :meth:`wrap`."""
        try:
            return crypto.open_sealed(self._key, blob, context)
        except crypto.DecryptError as exc:
            raise UnwrapError(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class TenantKey:
    """One unwrapped version of a tenant's KEK; wraps and unwraps record data keys."""

    tenant: str
    version: int
    _kek: bytes

    @property
    def key_id(self) -> str:
        """``kek/<tenant>/v<version>``: how receipts and listings name this key."""
        return f"kek/{self.tenant}/v{self.version}"

    def wrap_data_key(self, data_key: bytes, record_id: str) -> bytes:
        """Wrap a record's data key, bound to the tenant, the record and this version."""
        return crypto.seal(self._kek, data_key, self._dek_context(record_id))

    def unwrap_data_key(self, blob: bytes, record_id: str) -> bytes:
        """Unwrap a record's data key; crypto.DecryptError if it was not wrapped here."""
        return crypto.open_sealed(self._kek, blob, self._dek_context(record_id))

    def _dek_context(self, record_id: str) -> bytes:
        return crypto.context("broker/retention/dek/v1", self.tenant, record_id, self.version)


def _kek_context(tenant: str, version: int) -> bytes:
    return crypto.context("broker/retention/kek/v1", tenant, version)


def _now_us() -> int:
    return int(datetime.now(UTC).timestamp() * 1_000_000)


class Keyring:
    """Tenant KEKs in the database, wrapped by a :class:`KeyWrapper`. Thread-safe.

    Create it with :meth:`open`, which refuses a wrong or missing root key before anything is
    written. Methods that take a ``conn`` run inside the caller's transaction, so a record and
    the key version it names are committed together.
    """

    def __init__(
        self, engine: sa.Engine, wrapper: KeyWrapper, *, clock_us: Callable[[], int] = _now_us
    ) -> None:
        self._engine = engine
        self._writes = for_writes(engine)
        self._wrapper = wrapper
        self._clock_us = clock_us
        self._cache: dict[bytes, bytes] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls, engine: sa.Engine, wrapper: KeyWrapper, *, clock_us: Callable[[], int] = _now_us
    ) -> Keyring:
        """Check ``wrapper`` against the stored check blob (creating it on first use).

        RootKeyError if the check blob does not open under this root key, or if tenant keys
        exist without a check blob. Nothing is written in either case.
        """
        keyring = cls(engine, wrapper, clock_us=clock_us)
        with keyring._writes.begin() as conn:
            row = conn.execute(sa.select(retention_keyring)).first()
            if row is None:
                if conn.execute(sa.select(retention_tenant_keys.c.tenant).limit(1)).first():
                    raise RootKeyError(
                        "the database holds wrapped tenant keys but no keyring check value; "
                        "refusing to start rather than guess (restore retention_keyring)"
                    )
                conn.execute(
                    sa.insert(retention_keyring).values(
                        id=1,
                        root_key_id=wrapper.key_id,
                        check_blob=wrapper.wrap(_CHECK_PLAINTEXT, _CHECK_CONTEXT),
                        create_time_us=clock_us(),
                    )
                )
                return keyring
            try:
                ok = wrapper.unwrap(row.check_blob, _CHECK_CONTEXT) == _CHECK_PLAINTEXT
            except UnwrapError:
                ok = False
            if not ok:
                raise RootKeyError(
                    f"the configured retention root key ({wrapper.key_id}) is not the one that "
                    f"wrapped the stored tenant keys ({row.root_key_id}); nothing was changed. "
                    "Configure the original root key (retention.root_key_file, "
                    "retention.root_key_env or retention.pkcs11)"
                )
        return keyring

    @property
    def root_key_id(self) -> str:
        """The name of the root key in use."""
        return self._wrapper.key_id

    def current(self, conn: sa.Connection, tenant: str) -> TenantKey:
        """The tenant's newest KEK version, creating version 1 on first use.

        Runs in the caller's write transaction; on PostgreSQL the key row is locked FOR SHARE
        so that ``destroy_unused_versions`` cannot delete it before the caller's record commits.
        """
        query = (
            sa.select(retention_tenant_keys)
            .where(retention_tenant_keys.c.tenant == tenant)
            .order_by(retention_tenant_keys.c.version.desc())
            .limit(1)
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(read=True)
        row = conn.execute(query).first()
        if row is None:
            self._insert_version(conn, tenant, 1)
            row = conn.execute(query).one()
        return self._unwrapped(tenant, row.version, row.wrapped_key)

    def key(self, conn: sa.Connection, tenant: str, version: int) -> TenantKey:
        """One KEK version; KeyringCorrupt if it is missing (destroyed) or does not unwrap."""
        wrapped = conn.execute(
            sa.select(retention_tenant_keys.c.wrapped_key).where(
                retention_tenant_keys.c.tenant == tenant,
                retention_tenant_keys.c.version == version,
            )
        ).scalar()
        if wrapped is None:
            raise KeyringCorrupt(f"tenant key kek/{tenant}/v{version} does not exist")
        return self._unwrapped(tenant, version, wrapped)

    def rotate(self, tenant: str) -> int:
        """Add a new KEK version for ``tenant`` and return it; new records use it at once."""
        with self._writes.begin() as conn:
            newest = self._newest_version(conn, tenant)
            version = newest + 1
            if not self._insert_version(conn, tenant, version):
                raise KeyringCorrupt(f"another process rotated {tenant} at the same time; retry")
        return version

    def versions(self, tenant: str) -> list[int]:
        """The tenant's KEK versions still stored, oldest first."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(retention_tenant_keys.c.version)
                .where(retention_tenant_keys.c.tenant == tenant)
                .order_by(retention_tenant_keys.c.version)
            )
            return [int(v) for v in rows.scalars()]

    def tenants(self) -> list[str]:
        """Every tenant that has at least one KEK."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(retention_tenant_keys.c.tenant).distinct().order_by("tenant")
            )
            return [str(t) for t in rows.scalars()]

    def destroy_unused_versions(self, tenant: str) -> list[int]:
        """Delete the tenant's KEK versions older than the current one that no record uses.

        Each candidate row is locked first and the reference check runs after the lock is
        held, so a record committed meanwhile under that version keeps its key.
        """
        destroyed: list[int] = []
        with self._writes.begin() as conn:
            current = self._newest_version(conn, tenant)
            keys = retention_tenant_keys.c
            query = sa.select(keys.version).where(keys.tenant == tenant, keys.version < current)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()
            for version in list(conn.execute(query).scalars()):
                used = conn.execute(
                    sa.select(retention_records.c.record_id)
                    .where(
                        retention_records.c.tenant == tenant,
                        retention_records.c.key_version == version,
                    )
                    .limit(1)
                ).first()
                if used is None:
                    conn.execute(
                        sa.delete(retention_tenant_keys).where(
                            keys.tenant == tenant, keys.version == version
                        )
                    )
                    destroyed.append(int(version))
        return destroyed

    def destroy_tenant(self, conn: sa.Connection, tenant: str) -> int:
        """Delete every KEK version of ``tenant`` in the caller's transaction (erasure)."""
        result = conn.execute(
            sa.delete(retention_tenant_keys).where(retention_tenant_keys.c.tenant == tenant)
        )
        return int(result.rowcount or 0)

    def verify_all(self) -> int:
        """Unwrap every stored KEK; return the count, or KeyringCorrupt naming the first bad one."""
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(retention_tenant_keys)).all()
        for row in rows:
            self._unwrapped(row.tenant, row.version, row.wrapped_key)
        return len(rows)

    def rewrap_root(self, new_wrapper: KeyWrapper) -> int:
        """Re-wrap every KEK and the check blob under ``new_wrapper`` in one transaction.

        Afterwards only the new root key opens the keyring; the old one can be destroyed.
        Returns the number of KEKs re-wrapped.
        """
        with self._writes.begin() as conn:
            rows = conn.execute(sa.select(retention_tenant_keys)).all()
            for row in rows:
                kek = self._unwrapped(row.tenant, row.version, row.wrapped_key)._kek
                rewrapped = new_wrapper.wrap(kek, _kek_context(row.tenant, row.version))
                conn.execute(
                    sa.update(retention_tenant_keys)
                    .where(
                        retention_tenant_keys.c.tenant == row.tenant,
                        retention_tenant_keys.c.version == row.version,
                    )
                    .values(wrapped_key=rewrapped)
                )
            conn.execute(
                sa.update(retention_keyring).values(
                    root_key_id=new_wrapper.key_id,
                    check_blob=new_wrapper.wrap(_CHECK_PLAINTEXT, _CHECK_CONTEXT),
                )
            )
        with self._lock:
            self._cache.clear()
        self._wrapper = new_wrapper
        return len(rows)

    def _newest_version(self, conn: sa.Connection, tenant: str) -> int:
        newest = conn.execute(
            sa.select(sa.func.max(retention_tenant_keys.c.version)).where(
                retention_tenant_keys.c.tenant == tenant
            )
        ).scalar()
        return int(newest or 0)

    def _insert_version(self, conn: sa.Connection, tenant: str, version: int) -> bool:
        """Insert a fresh KEK version unless it exists; True if this call created it."""
        kek = crypto.new_key()
        values = {
            "tenant": tenant,
            "version": version,
            "wrapped_key": self._wrapper.wrap(kek, _kek_context(tenant, version)),
            "create_time_us": self._clock_us(),
        }
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(retention_tenant_keys).values(**values)
        result = conn.execute(statement.on_conflict_do_nothing())
        return bool(result.rowcount)

    def _unwrapped(self, tenant: str, version: int, wrapped: bytes) -> TenantKey:
        cache_key = hashlib.sha256(wrapped).digest()
        with self._lock:
            kek = self._cache.get(cache_key)
        if kek is None:
            try:
                kek = self._wrapper.unwrap(wrapped, _kek_context(tenant, version))
            except UnwrapError as exc:
                raise KeyringCorrupt(
                    f"tenant key kek/{tenant}/v{version} does not unwrap under the root key "
                    "although the keyring check passed: the stored key is damaged"
                ) from exc
            with self._lock:
                if len(self._cache) >= _CACHE_LIMIT:
                    self._cache.clear()
                self._cache[cache_key] = kek
        return TenantKey(tenant, version, kek)

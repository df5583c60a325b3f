"""Vendors' endpoint API keys: sealed at rest, looked up at call time, never shown back.

A vendor hands the broker the API key of its OpenAI-compatible endpoint with
``RegisterModel``/``UpdateModel`` (``Endpoint.api_key``, input only). The key must reach the
vendor on every call and nowhere else, so:

- it is stored in its own table, ``endpoint_secrets``, one row per model version (by reference),
  sealed with AES-256-GCM under the vendor tenant's ``endpoint-secret`` key, derived from the
  broker's enforcement master key (``broker.enforce.keys.TenantKeys``); the reference and the
  master key id are bound as associated data, so a sealed key copied onto another model's row,
  or a database restored under another master key, does not open;
- it never enters the ``ModelVersion`` domain object, the registry's JSON columns, audit entries
  or logs: responses only say ``api_key_set``;
- ``EndpointSecrets.lookup`` is the ``secrets=`` callable of ``OpenAIRuntime``. It keeps an
  opened key for as long as the registry's resolution cache keeps the model itself
  (``[registry] resolve_cache_seconds``), and only while the model's slot of the node's change
  counter (:mod:`broker.registry.generation`) is unchanged: every ``UpdateModel`` and
  ``RetireModel`` bumps it after its commit, so a rotated or removed key is used at once by
  every process of the node, and within that TTL on replicas elsewhere, exactly as a changed
  endpoint address is. Without the cache, each streamed answer paid a database read (about
  0.8 ms under load) before the vendor was even called. ``resolve_cache_seconds = 0`` reads the
  row at each call. The scheme (and why a key read while a change commits is never served) is
  :class:`~broker.registry.counted_cache.CountedCache`, shared with the resolution cache.

A key is at most ``MAX_API_KEY_CHARS`` printable ASCII characters without spaces, since it goes
into an HTTP header: anything else (a newline would split the header) is refused at
registration with a message that does not repeat it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Final

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlmodel import SQLModel

from broker.enforce.keys import TenantKeys
from broker.errors import InvalidArgument, Unavailable
from broker.logging import get_logger
from broker.registry.counted_cache import CountedCache, Miss
from broker.registry.generation import ChangeCounter, slot_of
from broker.registry.model import ModelVersion

_log = get_logger(__name__)

MAX_API_KEY_CHARS: Final = 4096
_NONCE_BYTES: Final = 12
#: Opened keys kept at most (one per model version called recently); the oldest goes first.
MAX_CACHED_KEYS: Final = 10_000

endpoint_secrets = sa.Table(
    "endpoint_secrets",
    SQLModel.metadata,
    sa.Column("ref", sa.String(300), nullable=False),
    sa.Column("vendor", sa.String(128), nullable=False),
    sa.Column("key_id", sa.String(16), nullable=False),
    sa.Column("sealed", sa.LargeBinary, nullable=False),
    sa.Column("update_time", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("ref", name="pk_endpoint_secrets"),
)


def check_api_key(value: str) -> None:
    """InvalidArgument unless ``value`` can travel in an ``Authorization`` header."""
    if len(value) > MAX_API_KEY_CHARS:
        raise InvalidArgument(
            f"model.endpoint.api_key is longer than {MAX_API_KEY_CHARS} characters"
        )
    if not all("!" <= ch <= "~" for ch in value):
        raise InvalidArgument(
            "model.endpoint.api_key must be printable ASCII without spaces or line breaks"
        )


class EndpointSecrets:
    """Sealed API keys by model reference, on the broker's database.

    ``ttl_seconds`` (0: no cache) and ``changes`` (the node's change counter, the one the
    registry's resolution cache uses; default: this process only) bound how long an opened key
    is reused (see the module docstring). Thread-safe.
    """

    def __init__(
        self,
        engine: sa.Engine,
        keys: TenantKeys,
        *,
        ttl_seconds: float = 0.0,
        changes: ChangeCounter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._keys = keys
        # By reference; None (no key stored) is an answer too.
        self._opened: CountedCache[str, str | None] = CountedCache(
            ttl_seconds=ttl_seconds, max_entries=MAX_CACHED_KEYS, changes=changes, clock=clock
        )

    def put(self, model: ModelVersion, api_key: str) -> None:
        """Store (or replace) the key of ``model``; an empty key removes it."""
        if not api_key:
            self.remove(model)
            return
        check_api_key(api_key)
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + AESGCM(self._key(model)).encrypt(
            nonce, api_key.encode(), self._aad(model.ref, self._keys.key_id)
        )
        row = {
            "ref": model.ref,
            "vendor": model.vendor,
            "key_id": self._keys.key_id,
            "sealed": sealed,
            "update_time": time.time(),
        }
        with self._engine.begin() as conn:
            conn.execute(sa.delete(endpoint_secrets).where(endpoint_secrets.c.ref == model.ref))
            conn.execute(sa.insert(endpoint_secrets).values(**row))
        self._forget(model)

    def remove(self, model: ModelVersion) -> None:
        """Forget the key of ``model`` (no error when there is none)."""
        with self._engine.begin() as conn:
            conn.execute(sa.delete(endpoint_secrets).where(endpoint_secrets.c.ref == model.ref))
        self._forget(model)

    def is_set(self, refs: Iterable[str]) -> set[str]:
        """Which of ``refs`` have a stored key (for ``api_key_set`` in responses)."""
        wanted = list(refs)
        if not wanted:
            return set()
        query = sa.select(endpoint_secrets.c.ref).where(endpoint_secrets.c.ref.in_(wanted))
        with self._engine.connect() as conn:
            return {str(ref) for ref in conn.execute(query).scalars()}

    def lookup(self, model: ModelVersion) -> str | None:
        """The key to send to ``model``'s endpoint, or None when the vendor stored none.

        Unavailable (not a silent None) when a stored key cannot be opened: calling the vendor
        without its key would only turn into a confusing 401 later. Never cached, that one.
        """
        found = self._opened.get(model.ref, slot_of(model.vendor, model.name))
        if type(found) is not Miss:
            return found
        api_key = self._read(model)  # Unavailable propagates: nothing is stored
        self._opened.put(found, api_key)
        return api_key

    def clear(self) -> None:
        """Forget every opened key of this process (after change notices may have been lost)."""
        self._opened.clear()

    def _forget(self, model: ModelVersion) -> None:
        """Drop this process's opened key of ``model`` (the registry bumps the counter too)."""
        self._opened.forget(model.ref)

    def _read(self, model: ModelVersion) -> str | None:
        """The key from its row, opened; None when there is no row."""
        query = sa.select(endpoint_secrets.c.sealed, endpoint_secrets.c.key_id).where(
            endpoint_secrets.c.ref == model.ref
        )
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        sealed, key_id = bytes(row[0]), str(row[1])
        nonce, body = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
        try:
            opened = AESGCM(self._key(model)).decrypt(nonce, body, self._aad(model.ref, key_id))
        except InvalidTag:
            _log.error("endpoint_secret_unreadable", model=model.ref, key_id=key_id)
            raise Unavailable(
                f"the API key stored for model {model.ref} cannot be opened; "
                "the vendor must set it again"
            ) from None
        return opened.decode()

    def _key(self, model: ModelVersion) -> bytes:
        return self._keys.key(model.vendor, "endpoint-secret")

    @staticmethod
    def _aad(ref: str, key_id: str) -> bytes:
        """The reference and the master key id the key was sealed under, bound to the seal."""
        return f"endpoint-secret\x00{key_id}\x00{ref}".encode()

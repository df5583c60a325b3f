"""A bounded, short-lived cache of model resolutions for the call path.

Why: every Invoke resolves its model reference, and through the store that is a database round
trip plus an ORM query and a row-to-domain conversion, about a sixth of the broker's CPU per
call in a profile, for an answer that changes only when a vendor registers, updates or retires a
version. ``CachedResolver`` keeps what ``RegistryStore.resolve`` answered for ``ttl_seconds``.

What is cached
--------------
- A resolved ``ModelVersion`` (frozen, so sharing one between calls is safe), for
  ``ttl_seconds``, per ``(reference, callable_only)``: an unversioned reference ("the newest
  LISTED version") is its own entry, next to the versioned ones.
- The two answers that depend only on stored state: ``NotFound`` (absent, or a DRAFT hidden from
  buyers) for the shorter ``negative_ttl_seconds``, and ``FailedPrecondition`` (retired) for
  ``ttl_seconds`` (retirement is final). They are raised afresh each time, never re-raised as
  the same exception object across threads.
- Nothing else: invalid references fail in the store's checks before any lookup, and a database
  error is never cached, so an outage ends as soon as the database answers again.

Staleness, and what makes it acceptable
---------------------------------------
In this process, :meth:`CachedResolver.invalidate` drops a model's entries the moment a change
is committed (wire it to the Registry servicer's ``on_change``). It also bumps the node's shared
change counter (:mod:`broker.registry.generation`), so the other broker processes of the same
node (``[server] workers``) drop every cached answer at once too. Replicas on other machines
sharing the database are *not* told: there a change shows after at most ``ttl_seconds`` (a new
LISTED version after at most ``negative_ttl_seconds`` if its absence was cached). In particular **a
retired model may still be callable on another replica for up to ``ttl_seconds`` after
RetireModel returns**, and an updated endpoint may still be used for as long. Operators who
cannot accept that window set ``ttl_seconds`` to 0, which turns the cache off.

Races: invalidation bumps the model's change counter instead of deleting entries, and a lookup
that missed stores its answer under the count it saw *before* reading the database. An answer
read before a change but stored after its invalidation is thus already stale, and is never
served. That scheme, and the bound (at most ``max_entries`` entries, the oldest fill dropped
first, so junk references can neither grow memory nor evict more than one entry each), is
:class:`~broker.registry.counted_cache.CountedCache`, shared with the endpoint keys' cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, NamedTuple, Protocol

from broker.errors import BrokerError, FailedPrecondition, NotFound
from broker.registry.counted_cache import CountedCache, Miss
from broker.registry.generation import ChangeCounter, slot_of
from broker.registry.model import ModelVersion
from broker.registry.refs import ModelRef

DEFAULT_TTL_SECONDS: Final = 2.0
DEFAULT_NEGATIVE_TTL_SECONDS: Final = 0.5
DEFAULT_MAX_ENTRIES: Final = 10_000
#: Errors that describe stored state and may be answered from the cache.
_CACHEABLE_ERRORS: Final = (NotFound, FailedPrecondition)


class Resolver(Protocol):
    """What is cached: ``RegistryStore.resolve`` (or another resolver, for tests)."""

    def resolve(self, ref: ModelRef, *, callable_only: bool) -> ModelVersion:
        """The version ``ref`` names; see ``RegistryStore.resolve``."""
        ...


class _Refusal(NamedTuple):
    """A cached NotFound or FailedPrecondition: raised afresh from these at each hit."""

    error_type: type[BrokerError]
    message: str


_Key = tuple[ModelRef, bool]


class CachedResolver:
    """``resolve`` in front of a store, with a TTL and explicit invalidation.

    ``ttl_seconds`` bounds how stale an answer may be on a replica that did not make the change
    (0 disables the cache); ``negative_ttl_seconds`` does the same for NotFound (at most
    ``ttl_seconds``). ``changes`` is the node's shared change counter (default: this process
    only). ``clock`` is monotonic seconds, injected so tests need no sleeping.
    Thread-safe (see :mod:`broker.registry.counted_cache`); the store is called outside any lock.
    """

    def __init__(
        self,
        store: Resolver,
        *,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        negative_ttl_seconds: float = DEFAULT_NEGATIVE_TTL_SECONDS,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        changes: ChangeCounter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_seconds < 0 or negative_ttl_seconds < 0 or max_entries < 0:
            raise ValueError("cache TTLs and max_entries must not be negative")
        self._store = store
        self._negative_ttl = min(negative_ttl_seconds, ttl_seconds)
        self._cache: CountedCache[_Key, ModelVersion | _Refusal] = CountedCache(
            ttl_seconds=ttl_seconds, max_entries=max_entries, changes=changes, clock=clock
        )

    def resolve(self, ref: ModelRef, *, callable_only: bool) -> ModelVersion:
        """What ``store.resolve(ref, callable_only=...)`` answered at most a TTL ago."""
        found = self._cache.get((ref, callable_only), slot_of(ref.vendor, ref.name))
        if type(found) is ModelVersion:  # the common case, by the cheapest test (every call)
            return found
        if isinstance(found, Miss):
            return self._resolve(found)
        if isinstance(found, _Refusal):
            raise found.error_type(found.message)
        return found  # what a store answered that is not exactly a ModelVersion (a subclass)

    @property
    def changes(self) -> ChangeCounter:
        """The change counter this cache checks (caches of other facts about a model share it)."""
        return self._cache.changes

    def invalidate(self, vendor: str, name: str) -> None:
        """Forget every cached answer about ``vendor/name`` (any version, unversioned too).

        Call it after a change to the model is committed; lookups already in flight cannot
        store what they read before it (see the module docstring). The node's other processes
        drop theirs too (the counter is shared).
        """
        self._cache.changes.bump(slot_of(vendor, name))

    def clear(self) -> None:
        """Forget every cached answer of this process (after change notices may have been lost)."""
        self._cache.clear()

    def __len__(self) -> int:
        """Entries held, expired ones included until they are replaced or evicted."""
        return len(self._cache)

    def _resolve(self, miss: Miss[_Key]) -> ModelVersion:
        """Ask the store, and cache its answer or its refusal under what ``miss`` saw."""
        ref, callable_only = miss.key
        try:
            model = self._store.resolve(ref, callable_only=callable_only)
        except _CACHEABLE_ERRORS as exc:
            ttl = self._negative_ttl if isinstance(exc, NotFound) else None
            self._cache.put(miss, _Refusal(type(exc), exc.message), ttl_seconds=ttl)
            raise
        self._cache.put(miss, model)
        return model

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
served.

Bound: at most ``max_entries`` entries; when full, the oldest inserted entry is dropped, so
junk references can neither grow memory nor evict more than one entry each.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final, NamedTuple, Protocol

from broker.errors import BrokerError, FailedPrecondition, NotFound
from broker.registry.generation import ChangeCounter, LocalChangeCounter, slot_of
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


class _Entry(NamedTuple):
    expires: float
    changes: int
    model: ModelVersion | None
    error: tuple[type[BrokerError], str] | None


_Key = tuple[ModelRef, bool]


class CachedResolver:
    """``resolve`` in front of a store, with a TTL and explicit invalidation.

    ``ttl_seconds`` bounds how stale an answer may be on a replica that did not make the change
    (0 disables the cache); ``negative_ttl_seconds`` does the same for NotFound (at most
    ``ttl_seconds``). ``changes`` is the node's shared change counter (default: this process
    only). ``clock`` is monotonic seconds, injected so tests need no sleeping.
    Thread-safe: one lock guards the dictionaries; the store is called outside it.
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
        self._ttl = ttl_seconds
        self._negative_ttl = min(negative_ttl_seconds, ttl_seconds)
        self._max = max_entries if ttl_seconds > 0 else 0
        self._clock = clock
        self._changes: ChangeCounter = changes if changes is not None else LocalChangeCounter()
        self._lock = threading.Lock()
        self._entries: dict[_Key, _Entry] = {}

    def resolve(self, ref: ModelRef, *, callable_only: bool) -> ModelVersion:
        """What ``store.resolve(ref, callable_only=...)`` answered at most a TTL ago."""
        if self._max == 0:
            return self._store.resolve(ref, callable_only=callable_only)
        key = (ref, callable_only)
        now = self._clock()
        changes = self._changes.current(slot_of(ref.vendor, ref.name))
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and entry.expires > now and entry.changes == changes:
            if entry.error is not None:
                error_type, message = entry.error
                raise error_type(message)
            assert entry.model is not None  # one of the two is always set
            return entry.model
        try:
            model = self._store.resolve(ref, callable_only=callable_only)
        except _CACHEABLE_ERRORS as exc:
            ttl = self._negative_ttl if isinstance(exc, NotFound) else self._ttl
            if ttl > 0:
                error = (type(exc), exc.message)
                self._put(key, _Entry(now + ttl, changes, None, error))
            raise
        self._put(key, _Entry(now + self._ttl, changes, model, None))
        return model

    @property
    def changes(self) -> ChangeCounter:
        """The change counter this cache checks (caches of other facts about a model share it)."""
        return self._changes

    def invalidate(self, vendor: str, name: str) -> None:
        """Forget every cached answer about ``vendor/name`` (any version, unversioned too).

        Call it after a change to the model is committed; lookups already in flight cannot
        store what they read before it (see the module docstring). The node's other processes
        drop theirs too (the counter is shared).
        """
        self._changes.bump(slot_of(vendor, name))

    def clear(self) -> None:
        """Forget every cached answer of this process (after change notices may have been lost)."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        """Entries held, expired ones included until they are replaced or evicted."""
        with self._lock:
            return len(self._entries)

    def _put(self, key: _Key, entry: _Entry) -> None:
        with self._lock:
            # Re-inserting moves the key to the end, so eviction drops the oldest fill first.
            self._entries.pop(key, None)
            while len(self._entries) >= self._max:
                del self._entries[next(iter(self._entries))]
            self._entries[key] = entry

"""A bounded cache whose entries end with a TTL or with a change to their model, whichever first.

Why: two caches on the call path keep what the database answered about a model for a short
while: :class:`~broker.registry.cache.CachedResolver` (the resolved model version) and
:class:`~broker.registry.secrets.EndpointSecrets` (its opened endpoint API key). Both must stop
serving an answer as soon as a committed change to the model is counted in the node's change
counter (:mod:`broker.registry.generation`), and the one subtle part, which count an answer is
stored under, is written and tested here once.

The scheme
----------
- :meth:`CountedCache.get` reads the clock, then the count of the model's slot, and answers
  from an entry only while it has not expired and was stored under that same count. Otherwise
  it returns a :class:`Miss` that remembers the time and the count it read.
- The caller then reads the database and hands what it read to :meth:`CountedCache.put` with
  that ``Miss``. The answer is stored under the count read *before* the database, and expires a
  TTL after that earlier time. So an answer read before a change but stored after the change's
  bump is stored under the old count, and is never served.
- At most ``max_entries`` entries: when full, the oldest filled entry goes first (a refill
  counts as new), so junk keys can neither grow memory nor evict more than one entry each.
  Expired entries stay until they are refilled or evicted.
- A TTL or ``max_entries`` of 0 turns the cache off: every ``get`` misses (without reading the
  clock or the counter) and ``put`` stores nothing.

Thread-safe: ``put``, ``forget`` and ``clear`` hold one lock, so a refill and its evictions are
one step and the bound holds; it is never held while the caller reads the database. ``get``, on
every call, reads without it: a single ``dict.get`` is atomic in CPython (and thread-safe in
free-threaded builds) and entries are immutable tuples, so a read racing a write sees the
dictionary before or after each of its steps: at worst a miss, which costs one database read.
Taking the lock there cost about a fifth of a hit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, NamedTuple, TypeVar, final

from broker.registry.generation import ChangeCounter, LocalChangeCounter

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@final
class Miss(NamedTuple, Generic[K]):
    """What :meth:`CountedCache.get` read before a miss: the key, the time and the count.

    Hand it back to :meth:`CountedCache.put` with the answer read afterwards, so that answer is
    stored under what was seen before it was read.
    """

    key: K
    read_at: float
    changes: int


class _Entry(NamedTuple, Generic[V]):
    expires: float
    changes: int
    value: V


class CountedCache(Generic[K, V]):
    """Values by key, each served until its TTL ends or its slot's change count moves.

    ``changes`` is the node's change counter (default: this process only); ``ttl_seconds`` is
    the default lifetime of an entry; ``clock`` is monotonic seconds, injected so tests need no
    sleeping. See the module docstring for the scheme.
    """

    def __init__(
        self,
        *,
        ttl_seconds: float,
        max_entries: int,
        changes: ChangeCounter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_seconds < 0:
            raise ValueError("ttl_seconds must not be negative")
        if max_entries < 0:
            raise ValueError("max_entries must not be negative")
        self._ttl = ttl_seconds
        self._max = max_entries if ttl_seconds > 0 else 0
        self._changes: ChangeCounter = changes if changes is not None else LocalChangeCounter()
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[K, _Entry[V]] = {}

    @property
    def changes(self) -> ChangeCounter:
        """The change counter entries are checked against."""
        return self._changes

    def get(self, key: K, slot: int) -> V | Miss[K]:
        """The value stored for ``key`` if still valid for ``slot``'s count, else a :class:`Miss`.

        ``slot`` is the counter slot of the model the value is about (``slot_of``).
        """
        if self._max == 0:
            return Miss(key, 0.0, 0)
        now = self._clock()
        changes = self._changes.current(slot)
        entry = self._entries.get(key)  # no lock: see the module docstring
        if entry is not None and entry.expires > now and entry.changes == changes:
            return entry.value
        return Miss(key, now, changes)

    def put(self, miss: Miss[K], value: V, *, ttl_seconds: float | None = None) -> None:
        """Store ``value``, read after ``miss``, under the count and from the time ``miss`` saw.

        ``ttl_seconds`` overrides the cache's TTL for this entry (at most that TTL is sensible;
        0 stores nothing).
        """
        ttl = self._ttl if ttl_seconds is None else ttl_seconds
        if self._max == 0 or ttl <= 0:
            return
        entry = _Entry(miss.read_at + ttl, miss.changes, value)
        with self._lock:
            # Re-inserting moves the key to the end, so eviction drops the oldest fill first.
            self._entries.pop(miss.key, None)
            while len(self._entries) >= self._max:
                del self._entries[next(iter(self._entries))]
            self._entries[miss.key] = entry

    def forget(self, key: K) -> None:
        """Drop the entry of ``key``, if any (this process changed what it holds)."""
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        """Drop every entry (after change notices may have been lost)."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        """Entries held, expired ones included until they are refilled or evicted."""
        with self._lock:
            return len(self._entries)

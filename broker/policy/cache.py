"""A bounded, thread-safe LRU cache of plans.

Values never enter the policy input, so a plan depends only on the revision and the input, and
the input is small: it *is* the cache key. The key is ``(revision, canonical JSON of the
input)``, which covers everything the issue lists (principal tenant, roles and claims, model id
and version, direction, purpose, field paths, types and labels, entity labels) and also the
rest of what the policy can read (subject, vendor, runtime, model attributes, entity paths).
Leaving any of those out would be unsound: a policy that reads it would get another caller's
plan. To keep hit rates high, the broker should put into ``principal.claims`` only the claims
its policies use (never per-token ones such as ``jti``, ``iat`` or ``exp``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import orjson

from broker.policy.contract import Plan, PolicyError, PolicyInput

CacheKey = tuple[str, bytes]


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters for metrics: hits, misses, evictions and the current size."""

    hits: int
    misses: int
    evictions: int
    size: int
    max_entries: int


class PlanCache:
    """LRU of :class:`Plan` by :meth:`key`; ``max_entries=0`` disables caching."""

    def __init__(self, max_entries: int = 10_000) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self._max = max_entries
        self._items: OrderedDict[CacheKey, Plan] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    @staticmethod
    def key(revision: str, policy_input: PolicyInput) -> CacheKey:
        """The cache key of one decision (see the module docstring for why it is all of it).

        An input that is not JSON (a claim holding a non-JSON value) cannot be evaluated
        either, so it raises :class:`PolicyError`.
        """
        try:
            encoded = orjson.dumps(policy_input.to_json_obj(), option=orjson.OPT_SORT_KEYS)
        except TypeError as exc:
            raise PolicyError("the policy input is not JSON", log_reason=str(exc)) from None
        return revision, encoded

    def get(self, key: CacheKey) -> Plan | None:
        """The cached plan, marked most recently used; ``None`` (a miss) otherwise."""
        with self._lock:
            plan = self._items.get(key)
            if plan is None:
                self._misses += 1
                return None
            self._items.move_to_end(key)
            self._hits += 1
            return plan

    def put(self, key: CacheKey, plan: Plan) -> None:
        """Store a plan, evicting the least recently used beyond ``max_entries``."""
        if self._max == 0:
            return
        with self._lock:
            self._items[key] = plan
            self._items.move_to_end(key)
            while len(self._items) > self._max:
                self._items.popitem(last=False)
                self._evictions += 1

    def clear(self) -> None:
        """Forget every plan (on reload: plans of the old revision must never be served)."""
        with self._lock:
            self._items.clear()

    @property
    def stats(self) -> CacheStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return CacheStats(
                self._hits, self._misses, self._evictions, len(self._items), self._max
            )

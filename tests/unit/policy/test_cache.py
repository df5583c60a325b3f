"""The plan cache: hits, misses, LRU eviction, clearing, and what the key distinguishes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from broker.policy.cache import PlanCache
from broker.policy.contract import (
    Plan,
    PolicyError,
    PolicyInput,
    PrincipalInfo,
    Retention,
    parse_plan,
)
from broker.policy.store import PolicyStore
from tests.unit.policy.conftest import TINY_POLICY, make_input


def _plan(revision: str = "r") -> Plan:
    return parse_plan({"allow": True}, make_input(), revision)


def test_hit_miss_and_clear() -> None:
    cache = PlanCache(max_entries=10)
    key = cache.key("r", make_input())
    assert cache.get(key) is None
    plan = _plan()
    cache.put(key, plan)
    assert cache.get(key) is plan
    assert cache.get(cache.key("r", make_input())) is plan, "equal inputs share a key"
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.size) == (2, 1, 1)
    cache.clear()
    assert cache.get(key) is None
    assert cache.stats.size == 0


def test_lru_eviction() -> None:
    cache = PlanCache(max_entries=2)
    keys = [cache.key("r", make_input(purpose=p)) for p in ("a", "b", "c")]
    cache.put(keys[0], _plan())
    cache.put(keys[1], _plan())
    assert cache.get(keys[0]) is not None  # keys[0] is now the most recently used
    cache.put(keys[2], _plan())
    assert cache.get(keys[1]) is None
    assert cache.get(keys[0]) is not None
    assert cache.stats.evictions == 1


def test_disabled_cache_stores_nothing() -> None:
    cache = PlanCache(max_entries=0)
    key = cache.key("r", make_input())
    cache.put(key, _plan())
    assert cache.get(key) is None
    with pytest.raises(ValueError, match="max_entries"):
        PlanCache(max_entries=-1)


@pytest.mark.parametrize(
    "other",
    [
        {"tenant": "acme"},
        {"runtime": "sandbox"},
        {"vendor": "shadyai"},
        {"direction": "response"},
        {"purpose": "marketing"},
        {"fields": (("/a", "string", ("pii.email",)),)},
        {"fields": (("/a", "string", ("pii.phone",)),)},
        {"entities": (("pii.email", ("/x",)),)},
    ],
)
def test_key_distinguishes_what_the_policy_sees(other: dict[str, object]) -> None:
    assert PlanCache.key("r", make_input()) != PlanCache.key("r", make_input(**other))  # type: ignore[arg-type]


def test_key_includes_revision() -> None:
    assert PlanCache.key("r1", make_input()) != PlanCache.key("r2", make_input())


def test_store_serves_hits_from_cache(write_bundle: Callable[[dict[str, str]], Path]) -> None:
    root = write_bundle(
        {"broker/policy.rego": TINY_POLICY, "broker/data.json": '{"action": "hash"}'}
    )
    store = PolicyStore(root, cache=PlanCache(max_entries=4))
    store.reload()
    first = store.decide(make_input())
    second = store.decide(make_input())
    assert second is first
    assert (store.cache.stats.hits, store.cache.stats.misses) == (1, 1)
    assert first.retention == Retention(0, 0)


def test_non_json_input_is_a_policy_error() -> None:
    bad = make_input()
    bad = PolicyInput(
        bad.direction,
        PrincipalInfo("t", "s", (), {"when": object()}),
        bad.model,
        bad.purpose,
    )
    with pytest.raises(PolicyError, match="not JSON"):
        PlanCache.key("r", bad)

"""CountedCache: expiry on an injected clock, the change count, the race, bound, clear, off."""

from __future__ import annotations

import threading
from typing import TypeVar

import pytest

from broker.registry.counted_cache import CountedCache, Miss
from broker.registry.generation import LocalChangeCounter

SLOT = 7
V = TypeVar("V")


class Clock:
    """Monotonic seconds that only move when a test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(clock: Clock) -> CountedCache[str, str]:
    """Two seconds per entry, this process's counter."""
    return CountedCache(ttl_seconds=2.0, max_entries=10, clock=clock)


def missed(cache: CountedCache[str, V], key: str, slot: int = SLOT) -> Miss[str]:
    """A lookup that must miss: what its caller hands back with what it then read."""
    found = cache.get(key, slot)
    assert isinstance(found, Miss)
    return found


def filled(cache: CountedCache[str, V], key: str, value: V, slot: int = SLOT) -> None:
    """A lookup that missed and stored what it read."""
    cache.put(missed(cache, key, slot), value)


def test_a_stored_value_is_served_until_its_ttl_ends(
    clock: Clock, cache: CountedCache[str, str]
) -> None:
    filled(cache, "k", "v")
    clock.now += 1.999
    assert cache.get("k", SLOT) == "v"
    clock.now += 0.001
    assert isinstance(cache.get("k", SLOT), Miss)


def test_the_ttl_runs_from_before_the_read_not_from_the_store(
    clock: Clock, cache: CountedCache[str, str]
) -> None:
    miss = missed(cache, "k")
    clock.now += 1.5  # a slow database read
    cache.put(miss, "v")
    clock.now += 0.5
    assert isinstance(cache.get("k", SLOT), Miss)


def test_a_shorter_ttl_per_entry_and_zero_stores_nothing(
    clock: Clock, cache: CountedCache[str, str]
) -> None:
    cache.put(missed(cache, "short"), "v", ttl_seconds=0.5)
    clock.now += 0.499
    assert cache.get("short", SLOT) == "v"
    clock.now += 0.001
    assert isinstance(cache.get("short", SLOT), Miss)
    cache.put(missed(cache, "none"), "v", ttl_seconds=0)
    assert len(cache) == 1


def test_a_change_in_the_slot_ends_the_entry_and_other_slots_keep_theirs() -> None:
    changes = LocalChangeCounter()
    cache: CountedCache[str, str] = CountedCache(
        ttl_seconds=60.0, max_entries=10, changes=changes, clock=Clock()
    )
    assert cache.changes is changes
    filled(cache, "k", "v", slot=SLOT)
    filled(cache, "other", "w", slot=SLOT + 1)
    changes.bump(SLOT)
    assert isinstance(cache.get("k", SLOT), Miss)
    assert cache.get("other", SLOT + 1) == "w"
    filled(cache, "k", "v2", slot=SLOT)  # refilled under the new count
    assert cache.get("k", SLOT) == "v2"


def test_a_value_read_across_a_change_is_never_served() -> None:
    """Stored under the count seen before the read, so it is stale as soon as it is stored."""
    changes = LocalChangeCounter()
    cache: CountedCache[str, str] = CountedCache(
        ttl_seconds=60.0, max_entries=10, changes=changes, clock=Clock()
    )
    miss = missed(cache, "k")
    changes.bump(SLOT)  # the change commits while the old value is in hand
    cache.put(miss, "old")
    assert isinstance(cache.get("k", SLOT), Miss)


def test_none_is_a_value_of_its_own() -> None:
    cache: CountedCache[str, str | None] = CountedCache(
        ttl_seconds=60.0, max_entries=10, clock=Clock()
    )
    filled(cache, "k", None)
    assert cache.get("k", SLOT) is None


def test_the_bound_evicts_the_oldest_fill_first() -> None:
    changes = LocalChangeCounter()
    cache: CountedCache[str, str] = CountedCache(
        ttl_seconds=60.0, max_entries=2, changes=changes, clock=Clock()
    )
    filled(cache, "a", "1", slot=1)
    filled(cache, "b", "2")
    changes.bump(1)
    filled(cache, "a", "1", slot=1)  # a refill counts as new: "b" is now the oldest
    filled(cache, "c", "3")
    assert len(cache) == 2
    assert isinstance(cache.get("b", SLOT), Miss)
    assert cache.get("a", 1) == "1"
    assert cache.get("c", SLOT) == "3"


def test_forget_and_clear() -> None:
    cache: CountedCache[str, str] = CountedCache(ttl_seconds=60.0, max_entries=10, clock=Clock())
    for key in ("a", "b", "c"):
        filled(cache, key, key)
    cache.forget("a")
    cache.forget("absent")
    assert isinstance(cache.get("a", SLOT), Miss)
    assert cache.get("b", SLOT) == "b"
    cache.clear()
    assert len(cache) == 0
    assert isinstance(cache.get("b", SLOT), Miss)


@pytest.mark.parametrize(("ttl", "max_entries"), [(0.0, 10), (60.0, 0)])
def test_zero_ttl_or_bound_turns_it_off_without_reading_clock_or_counter(
    ttl: float, max_entries: int
) -> None:
    def unread() -> float:
        raise AssertionError("the clock was read")

    cache: CountedCache[str, str] = CountedCache(
        ttl_seconds=ttl, max_entries=max_entries, clock=unread
    )
    for _ in range(2):
        filled(cache, "k", "v")
    assert len(cache) == 0


def test_negative_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="ttl_seconds must not be negative"):
        CountedCache(ttl_seconds=-1, max_entries=1)
    with pytest.raises(ValueError, match="max_entries must not be negative"):
        CountedCache(ttl_seconds=1, max_entries=-1)


def test_concurrent_fills_keep_the_bound_and_reads_see_only_their_own_values() -> None:
    """Fills evict while other threads read without the lock: a read is a hit or a miss."""
    cache: CountedCache[str, str] = CountedCache(ttl_seconds=60.0, max_entries=50, clock=Clock())
    wrong: list[object] = []

    def fill(worker: int) -> None:
        for i in range(500):
            key = f"{worker}-{i % 80}"
            found = cache.get(key, SLOT)
            if isinstance(found, Miss):
                cache.put(found, key)
            elif found != key:
                wrong.append(found)

    threads = [threading.Thread(target=fill, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) == 50
    assert wrong == []

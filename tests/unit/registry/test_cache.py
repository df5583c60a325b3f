"""CachedResolver: hits, expiry on an injected clock, invalidation, bounds, what is not cached."""

from __future__ import annotations

import dataclasses

import pytest

from broker.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from broker.registry.cache import CachedResolver
from broker.registry.model import ModelStatus, ModelVersion
from broker.registry.refs import ModelRef
from broker.registry.store import RegistryStore
from tests.unit.registry.builders import oip_model

REF = ModelRef("acme", "iris", "1.0.0")


class Clock:
    """Monotonic seconds that only move when a test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Counting:
    """Wraps a resolver and counts the lookups that reach it."""

    def __init__(self, inner: RegistryStore) -> None:
        self.inner = inner
        self.calls = 0

    def resolve(self, ref: ModelRef, *, callable_only: bool) -> ModelVersion:
        self.calls += 1
        return self.inner.resolve(ref, callable_only=callable_only)


@pytest.fixture
def counting(store: RegistryStore) -> Counting:
    store.register(oip_model())
    return Counting(store)


def test_a_hit_does_not_reach_the_store(counting: Counting) -> None:
    cache = CachedResolver(counting, clock=Clock())
    first = cache.resolve(REF, callable_only=True)
    assert cache.resolve(REF, callable_only=True) is first
    assert counting.calls == 1
    # callable_only and the unversioned reference are answers of their own.
    cache.resolve(REF, callable_only=False)
    cache.resolve(ModelRef("acme", "iris"), callable_only=True)
    assert counting.calls == 3


def test_entries_expire_after_the_ttl(counting: Counting) -> None:
    clock = Clock()
    cache = CachedResolver(counting, ttl_seconds=2.0, clock=clock)
    cache.resolve(REF, callable_only=True)
    clock.now += 1.999
    cache.resolve(REF, callable_only=True)
    assert counting.calls == 1
    clock.now += 0.001
    cache.resolve(REF, callable_only=True)
    assert counting.calls == 2


def test_a_change_shows_after_invalidation(counting: Counting, store: RegistryStore) -> None:
    cache = CachedResolver(counting, clock=Clock())
    assert cache.resolve(REF, callable_only=True).description == "Iris classifier"
    store.update("acme", "iris", "1.0.0", {"description": "v2"})
    assert cache.resolve(REF, callable_only=True).description == "Iris classifier"  # within ttl
    cache.invalidate("acme", "other")  # another model: no effect
    assert cache.resolve(REF, callable_only=True).description == "Iris classifier"
    cache.invalidate("acme", "iris")
    assert cache.resolve(REF, callable_only=True).description == "v2"


def test_retired_model_is_refused_after_invalidation(
    counting: Counting, store: RegistryStore
) -> None:
    clock = Clock()
    cache = CachedResolver(counting, ttl_seconds=2.0, clock=clock)
    cache.resolve(REF, callable_only=True)
    store.retire("acme", "iris", "1.0.0")
    # The documented window: without invalidation (another replica) it stays callable a while.
    assert cache.resolve(REF, callable_only=True).status is ModelStatus.LISTED
    cache.invalidate("acme", "iris")
    with pytest.raises(FailedPrecondition, match="retired"):
        cache.resolve(REF, callable_only=True)
    calls = counting.calls
    with pytest.raises(FailedPrecondition, match="retired"):  # retirement is final: cached
        cache.resolve(REF, callable_only=True)
    assert counting.calls == calls
    with pytest.raises(NotFound):  # the newest LISTED version is gone as well
        cache.resolve(ModelRef("acme", "iris"), callable_only=True)


def test_retired_model_is_refused_on_another_replica_after_the_ttl(
    counting: Counting, store: RegistryStore
) -> None:
    clock = Clock()
    cache = CachedResolver(counting, ttl_seconds=2.0, clock=clock)
    cache.resolve(REF, callable_only=True)
    store.retire("acme", "iris", "1.0.0")  # made elsewhere: nobody invalidates this cache
    clock.now += 2.0
    with pytest.raises(FailedPrecondition, match="retired"):
        cache.resolve(REF, callable_only=True)


def test_not_found_is_cached_for_the_short_negative_ttl(
    counting: Counting, store: RegistryStore
) -> None:
    clock = Clock()
    cache = CachedResolver(counting, ttl_seconds=2.0, negative_ttl_seconds=0.5, clock=clock)
    ref = ModelRef("acme", "iris", "2.0.0")
    for _ in range(2):
        with pytest.raises(NotFound, match="not found"):
            cache.resolve(ref, callable_only=True)
    assert counting.calls == 1
    store.register(oip_model(version="2.0.0"))
    clock.now += 0.5
    assert cache.resolve(ref, callable_only=True).version == "2.0.0"
    assert counting.calls == 2


def test_registration_in_this_process_shows_at_once(
    counting: Counting, store: RegistryStore
) -> None:
    cache = CachedResolver(counting, clock=Clock())
    assert cache.resolve(ModelRef("acme", "iris"), callable_only=True).version == "1.0.0"
    store.register(oip_model(version="1.1.0"))
    cache.invalidate("acme", "iris")
    assert cache.resolve(ModelRef("acme", "iris"), callable_only=True).version == "1.1.0"


class Failing:
    """A resolver that raises whatever it is given, and counts."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def resolve(self, ref: ModelRef, *, callable_only: bool) -> ModelVersion:
        self.calls += 1
        raise self.error


@pytest.mark.parametrize("error", [Unavailable("db down"), InvalidArgument("bad"), OSError()])
def test_other_errors_are_never_cached(error: Exception) -> None:
    failing = Failing(error)
    cache = CachedResolver(failing, clock=Clock())
    for _ in range(3):
        with pytest.raises(type(error)):
            cache.resolve(REF, callable_only=True)
    assert failing.calls == 3
    assert len(cache) == 0


def test_cached_errors_are_fresh_exceptions() -> None:
    failing = Failing(NotFound("model acme/iris@1.0.0 not found"))
    cache = CachedResolver(failing, clock=Clock())
    raised = []
    for _ in range(2):
        with pytest.raises(NotFound) as info:
            cache.resolve(REF, callable_only=True)
        raised.append(info.value)
    assert raised[0] is not raised[1]
    assert raised[0].message == raised[1].message
    assert failing.calls == 1


class Fixed:
    """Answers every reference with a model of that name, and counts."""

    def __init__(self) -> None:
        self.calls = 0
        self.during: CachedResolver | None = None

    def resolve(self, ref: ModelRef, *, callable_only: bool) -> ModelVersion:
        self.calls += 1
        if self.during is not None:  # a change committed while this lookup was in flight
            self.during.invalidate(ref.vendor, ref.name)
        return dataclasses.replace(oip_model(), name=ref.name)


def test_entries_are_bounded_and_the_oldest_goes_first() -> None:
    fixed = Fixed()
    cache = CachedResolver(fixed, max_entries=2, clock=Clock())
    for name in ("a", "b", "c"):
        cache.resolve(ModelRef("acme", name, "1"), callable_only=True)
    assert len(cache) == 2
    cache.resolve(ModelRef("acme", "c", "1"), callable_only=True)
    cache.resolve(ModelRef("acme", "b", "1"), callable_only=True)
    assert fixed.calls == 3
    cache.resolve(ModelRef("acme", "a", "1"), callable_only=True)  # evicted
    assert fixed.calls == 4


def test_a_lookup_straddling_an_invalidation_is_not_served() -> None:
    fixed = Fixed()
    cache = CachedResolver(fixed, clock=Clock())
    fixed.during = cache
    cache.resolve(REF, callable_only=True)
    fixed.during = None
    cache.resolve(REF, callable_only=True)
    assert fixed.calls == 2  # the first answer was read before the change: not reused
    cache.resolve(REF, callable_only=True)
    assert fixed.calls == 2


def test_zero_ttl_turns_the_cache_off() -> None:
    fixed = Fixed()
    cache = CachedResolver(fixed, ttl_seconds=0, clock=Clock())
    for _ in range(3):
        cache.resolve(REF, callable_only=True)
    assert fixed.calls == 3
    assert len(cache) == 0


def test_negative_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        CachedResolver(Fixed(), ttl_seconds=-1)

"""Per-tenant concurrency limits."""

from __future__ import annotations

import pytest

from broker.calls.concurrency import TenantConcurrencyLimiter
from broker.errors import ResourceExhausted


def test_limit_is_per_tenant_and_slots_are_released() -> None:
    limiter = TenantConcurrencyLimiter(2)
    with limiter.slot("a"), limiter.slot("a"):
        assert limiter.in_flight("a") == 2
        with pytest.raises(ResourceExhausted, match="limit is 2"), limiter.slot("a"):
            pass
        with limiter.slot("b"):
            assert limiter.in_flight("b") == 1
    assert limiter.in_flight("a") == 0
    assert limiter.in_flight("b") == 0


def test_slot_is_released_when_the_call_fails() -> None:
    limiter = TenantConcurrencyLimiter(1)
    with pytest.raises(RuntimeError), limiter.slot("a"):
        raise RuntimeError("backend failed")
    with limiter.slot("a"):
        assert limiter.in_flight("a") == 1


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        TenantConcurrencyLimiter(0)

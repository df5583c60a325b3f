"""Per-tenant concurrency limits.

One tenant must not be able to occupy every worker thread of the broker. Each tenant may run
at most ``limit`` calls at once; a call over the limit is refused immediately with
RESOURCE_EXHAUSTED rather than queued, so the caller's retry policy decides what happens next.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from broker.errors import ResourceExhausted


class TenantConcurrencyLimiter:
    """Counts calls in flight per tenant and refuses those over the limit."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._limit = limit
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def slot(self, tenant: str) -> Iterator[None]:
        """Hold one of the tenant's slots for the duration of the block."""
        with self._lock:
            current = self._in_flight.get(tenant, 0)
            if current >= self._limit:
                raise ResourceExhausted(
                    f"tenant has {current} calls in flight, the limit is {self._limit}: retry later"
                )
            self._in_flight[tenant] = current + 1
        try:
            yield
        finally:
            with self._lock:
                remaining = self._in_flight[tenant] - 1
                if remaining:
                    self._in_flight[tenant] = remaining
                else:
                    del self._in_flight[tenant]

    def in_flight(self, tenant: str) -> int:
        """Calls the tenant has in flight now."""
        with self._lock:
            return self._in_flight.get(tenant, 0)

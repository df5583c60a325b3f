"""Quotas and rate limits per buyer tenant and per (tenant, model), enforced from the database.

Why the database and not process memory: a broker runs several worker processes and, on
PostgreSQL, several replicas; a limit counted in one process's memory would let each of them
admit the full rate. Here every process takes from the same rows:

- **calls per second**: a token bucket per rule in ``rate_buckets``, refilled at
  ``calls_per_second`` up to ``burst`` and taken from by one ``INSERT .. ON CONFLICT DO UPDATE
  .. RETURNING`` statement. The database serialises it per row (PostgreSQL's row lock, SQLite's
  write lock), so two processes can never take the same token, and the refill is computed from
  the stored time, so it does not depend on which process asks. A clock behind the stored one
  refills nothing (it never takes tokens back).
- **monthly budgets** (spend in micros of one currency, tokens): the sum of the tenant's usage
  records of the current UTC month, which are written with each call's audit outcome. A budget
  is checked before a call starts, so calls already in flight when it is reached still finish:
  the overshoot is at most what those calls cost.

A refused call gets :class:`~broker.errors.QuotaExceeded` (RESOURCE_EXHAUSTED with QuotaFailure
and RetryInfo details) and, like every refused call, an audit outcome and a usage record that
bills nothing. A tenant with no rule costs one dictionary lookup per call: no query at all.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import sqlalchemy as sa

from broker.errors import QuotaExceeded
from broker.metering.records import month_of
from broker.registry.model import ModelVersion
from broker.registry.pricing import format_micros
from broker.storage.db import for_writes

_TAKE_SQL: Final = """
INSERT INTO rate_buckets (key, tokens, updated_us, granted)
VALUES (:key, :burst - 1, :now, 1)
ON CONFLICT (key) DO UPDATE SET
  tokens = CASE WHEN {least}(:burst, rate_buckets.tokens
                     + {greatest}(:now - rate_buckets.updated_us, 0) * :rate / 1000000.0) >= 1
           THEN {least}(:burst, rate_buckets.tokens
                     + {greatest}(:now - rate_buckets.updated_us, 0) * :rate / 1000000.0) - 1
           ELSE {least}(:burst, rate_buckets.tokens
                     + {greatest}(:now - rate_buckets.updated_us, 0) * :rate / 1000000.0)
           END,
  granted = CASE WHEN {least}(:burst, rate_buckets.tokens
                     + {greatest}(:now - rate_buckets.updated_us, 0) * :rate / 1000000.0) >= 1
           THEN 1 ELSE 0 END,
  updated_us = {greatest}(rate_buckets.updated_us, :now)
RETURNING tokens, granted
"""
_SPENT_SQL: Final = """
SELECT coalesce(sum(CASE WHEN currency = :currency THEN cost_micros ELSE 0 END), 0),
       coalesce(sum(input_tokens + output_tokens), 0)
FROM usage_records
WHERE tenant = :tenant AND month = :month {model}
"""
_MODEL_FILTER: Final = "AND vendor = :vendor AND substr(model, 1, :prefix_length) = :prefix"


@dataclass(frozen=True, slots=True)
class QuotaRule:
    """One rule: a tenant, optionally one model (``vendor/name``), and its limits."""

    tenant: str
    model: str = ""
    calls_per_second: float | None = None
    burst: int | None = None
    monthly_spend_micros: int | None = None
    currency: str = ""
    monthly_tokens: int | None = None

    @property
    def subject(self) -> str:
        """What the rule limits, as QuotaFailure names it."""
        suffix = f"/model:{self.model}" if self.model else ""
        return f"tenant:{self.tenant}{suffix}"

    @property
    def scope(self) -> str:
        """Where, for people: ``model demo-vendor/iris`` or ``all models``."""
        return f"model {self.model}" if self.model else "all models"


class Quotas:
    """The configured rules, enforced with one database per broker (shared by its replicas)."""

    def __init__(
        self,
        engine: sa.Engine,
        rules: Iterable[QuotaRule],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = for_writes(engine)
        self._clock = clock
        self._by_tenant: dict[str, list[QuotaRule]] = {}
        for rule in rules:
            self._by_tenant.setdefault(rule.tenant, []).append(rule)
        postgres = engine.dialect.name == "postgresql"
        least, greatest = ("LEAST", "GREATEST") if postgres else ("min", "max")
        self._take = sa.text(_TAKE_SQL.format(least=least, greatest=greatest))
        self._spent_all = sa.text(_SPENT_SQL.format(model=""))
        self._spent_model = sa.text(_SPENT_SQL.format(model=_MODEL_FILTER))

    def __bool__(self) -> bool:
        return bool(self._by_tenant)

    def admit(self, tenant: str, model: ModelVersion) -> None:
        """Let one call of ``tenant`` to ``model`` start, or raise QuotaExceeded.

        Budgets are checked first (reads only), then one token is taken from each rate limit,
        so a call refused by a budget does not use up rate.
        """
        rules = self._by_tenant.get(tenant)
        if not rules:
            return
        key = f"{model.vendor}/{model.name}"
        applicable = [rule for rule in rules if not rule.model or rule.model == key]
        if not applicable:
            return
        now = self._clock()
        for rule in applicable:
            self._check_budgets(rule, model, now)
        for rule in applicable:
            if rule.calls_per_second is not None:
                self._take_token(rule, now)

    def _check_budgets(self, rule: QuotaRule, model: ModelVersion, now: float) -> None:
        if rule.monthly_spend_micros is None and rule.monthly_tokens is None:
            return
        month = month_of(int(now * 1_000_000))
        params: dict[str, object] = {"tenant": rule.tenant, "month": month}
        params["currency"] = rule.currency
        query = self._spent_all
        if rule.model:
            prefix = f"{model.vendor}/{model.name}@"
            params.update(vendor=model.vendor, prefix=prefix, prefix_length=len(prefix))
            query = self._spent_model
        with self._engine.connect() as conn:
            spent, tokens = (int(v) for v in conn.execute(query, params).one())
        wait = _until_next_month(now)
        if rule.monthly_spend_micros is not None and spent >= rule.monthly_spend_micros:
            limit = f"{rule.currency} {format_micros(rule.monthly_spend_micros)}"
            raise QuotaExceeded(
                f"tenant {rule.tenant}: monthly spend limit of {limit} on {rule.scope} reached "
                f"in {month} ({rule.currency} {format_micros(spent)} spent); retry in "
                f"{wait:.0f} s, when the next month starts (UTC)",
                subject=rule.subject,
                retry_after=wait,
            )
        if rule.monthly_tokens is not None and tokens >= rule.monthly_tokens:
            raise QuotaExceeded(
                f"tenant {rule.tenant}: monthly limit of {rule.monthly_tokens} tokens on "
                f"{rule.scope} reached in {month} ({tokens} used); retry in {wait:.0f} s, "
                "when the next month starts (UTC)",
                subject=rule.subject,
                retry_after=wait,
            )

    def _take_token(self, rule: QuotaRule, now: float) -> None:
        rate = rule.calls_per_second
        assert rate is not None  # checked by the caller
        burst = rule.burst if rule.burst is not None else max(1, math.ceil(rate))
        params = {"key": rule.subject, "burst": burst, "now": int(now * 1_000_000), "rate": rate}
        with self._engine.begin() as conn:
            tokens, granted = conn.execute(self._take, params).one()
        if granted:
            return
        wait = (1.0 - float(tokens)) / rate
        raise QuotaExceeded(
            f"tenant {rule.tenant}: {_rate(rate)} calls/s limit on {rule.scope}; "
            f"retry in {_seconds(wait)} s",
            subject=rule.subject,
            retry_after=wait,
        )


def rules_from(configs: Sequence[object]) -> list[QuotaRule]:
    """Rules from the config's ``metering.quotas`` entries (same field names)."""
    names = QuotaRule.__dataclass_fields__
    return [QuotaRule(**{name: getattr(config, name) for name in names}) for config in configs]


def _until_next_month(now: float) -> float:
    current = datetime.fromtimestamp(now, UTC)
    year, month = (
        (current.year + 1, 1) if current.month == 12 else (current.year, current.month + 1)
    )
    return datetime(year, month, 1, tzinfo=UTC).timestamp() - now


def _rate(rate: float) -> str:
    return f"{rate:g}"


def _seconds(value: float) -> str:
    return f"{max(value, 0.001):.3g}"

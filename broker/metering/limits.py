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
  the overshoot is at most what those calls cost. The sum is kept per rule and month in the
  process (``_Spent``) with the highest ``leaf_index`` it covers, and each check adds only the
  records written since: usage records take the leaf index of their outcome entry, which is
  assigned under the log's integrator lock in commit order, so a statement's snapshot holds
  every record up to some leaf and none after it, and a record not yet seen always comes after
  the mark, whichever process or replica wrote it. Summing the whole month on every call (as
  before) cost a call of a tenant with a budget time in proportion to the month's calls. When
  more than ``catch_up_leaves`` leaves were written since the mark (a tenant that calls rarely
  on a busy broker), the month is summed again instead, as the cheaper of the two.

A refused call gets :class:`~broker.errors.QuotaExceeded` (RESOURCE_EXHAUSTED with QuotaFailure
and RetryInfo details) and, like every refused call, an audit outcome and a usage record that
bills nothing. A tenant with no rule costs one dictionary lookup per call: no query at all.
"""

from __future__ import annotations

import math
import threading
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
#: The whole month of a rule, and the log's last usage leaf in the same snapshot.
_SPENT_SQL: Final = """
SELECT coalesce(sum(CASE WHEN currency = :currency THEN cost_micros ELSE 0 END), 0),
       coalesce(sum(input_tokens + output_tokens), 0),
       (SELECT max(leaf_index) FROM usage_records)
FROM usage_records
WHERE tenant = :tenant AND month = :month {model}
"""
#: What a rule's month gained in ``(after, after + gap]``, and the log's last usage leaf (if it
#: is beyond ``after + gap`` the scan did not reach it and the month is summed again).
_SPENT_SINCE_SQL: Final = """
SELECT coalesce(sum(CASE WHEN tenant = :tenant AND month = :month {model}
                          AND currency = :currency THEN cost_micros ELSE 0 END), 0),
       coalesce(sum(CASE WHEN tenant = :tenant AND month = :month {model}
                         THEN input_tokens + output_tokens ELSE 0 END), 0),
       (SELECT max(leaf_index) FROM usage_records)
FROM usage_records
WHERE leaf_index > :after AND leaf_index <= :after + :gap
"""
_MODEL_FILTER: Final = "AND vendor = :vendor AND substr(model, 1, :prefix_length) = :prefix"
#: Leaves after the mark beyond which a check sums the month again rather than the new rows.
CATCH_UP_LEAVES: Final = 10_000


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
        catch_up_leaves: int = CATCH_UP_LEAVES,
    ) -> None:
        self._engine = for_writes(engine)
        self._clock = clock
        self._catch_up = catch_up_leaves
        self._spent: dict[tuple[QuotaRule, str], _Spent] = {}
        self._spent_lock = threading.Lock()
        self._by_tenant: dict[str, list[QuotaRule]] = {}
        for rule in rules:
            self._by_tenant.setdefault(rule.tenant, []).append(rule)
        postgres = engine.dialect.name == "postgresql"
        least, greatest = ("LEAST", "GREATEST") if postgres else ("min", "max")
        self._take = sa.text(_TAKE_SQL.format(least=least, greatest=greatest))
        self._month_sql = {
            False: sa.text(_SPENT_SQL.format(model="")),
            True: sa.text(_SPENT_SQL.format(model=_MODEL_FILTER)),
        }
        self._since_sql = {
            False: sa.text(_SPENT_SINCE_SQL.format(model="")),
            True: sa.text(_SPENT_SINCE_SQL.format(model=_MODEL_FILTER)),
        }

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
        if rule.model:
            prefix = f"{model.vendor}/{model.name}@"
            params.update(vendor=model.vendor, prefix=prefix, prefix_length=len(prefix))
        spent, tokens = self._spent_in(rule, month, params)
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

    def _spent_in(self, rule: QuotaRule, month: str, params: dict[str, object]) -> tuple[int, int]:
        """(spend in micros, tokens) of ``rule`` in ``month``: the kept sum plus what is new."""
        key = (rule, month)
        with self._spent_lock:
            kept = self._spent.get(key)
        by_model = bool(rule.model)
        with self._engine.connect() as conn:
            if kept is not None:
                gained = conn.execute(
                    self._since_sql[by_model],
                    {**params, "after": kept.mark, "gap": self._catch_up},
                ).one()
                last = _leaf(gained[2])
                if last <= kept.mark + self._catch_up:
                    spent = _Spent(kept.micros + int(gained[0]), kept.tokens + int(gained[1]), last)
                    return self._keep(key, spent)
            whole = conn.execute(self._month_sql[by_model], params).one()
        return self._keep(key, _Spent(int(whole[0]), int(whole[1]), _leaf(whole[2])))

    def _keep(self, key: tuple[QuotaRule, str], spent: _Spent) -> tuple[int, int]:
        """Keep ``spent`` unless a concurrent check kept a later one; drop other months."""
        with self._spent_lock:
            kept = self._spent.get(key)
            if kept is None or kept.mark < spent.mark:
                if kept is None:  # a new month (or rule): the months before are over
                    for stale in [k for k in self._spent if k[0] == key[0]]:
                        del self._spent[stale]
                self._spent[key] = spent
        return spent.micros, spent.tokens

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


@dataclass(frozen=True, slots=True)
class _Spent:
    """A rule's month as summed: spend in micros, tokens, and the last usage leaf it covers."""

    micros: int
    tokens: int
    mark: int


def _leaf(value: object) -> int:
    """A ``max(leaf_index)`` as an int; -1 when there is no usage record at all."""
    return -1 if value is None else int(value)  # type: ignore[call-overload]


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

"""Rate limits and monthly budgets from the database, with an injected clock (no sleeping)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from broker.config import ConfigError, load_config
from broker.errors import QuotaExceeded
from broker.metering.limits import QuotaRule, Quotas, rules_from
from broker.metering.tables import usage_records
from broker.registry.model import ModelVersion, Runtime

IRIS = ModelVersion(vendor="demo-vendor", name="iris", version="1.0.0", runtime=Runtime.SANDBOX)
CHAT = ModelVersion(vendor="demo-vendor", name="chat", version="2.0.0", runtime=Runtime.SANDBOX)
QUOTAS = "BROKER__METERING__QUOTAS"
DEC_15 = 1_797_292_800.0  # 2026-12-15T00:00:00Z


class Clock:
    def __init__(self, now: float = DEC_15) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _usage(engine: sa.Engine, tenant: str, model: str, cost: int, tokens: int, n: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            usage_records.insert(),
            {
                "call_id": f"c{n}",
                "leaf_index": n,
                "time_us": int(DEC_15 * 1_000_000),
                "month": "2026-12",
                "tenant": tenant,
                "subject": "s",
                "vendor": model.split("/", maxsplit=1)[0],
                "model": model,
                "status": "OK",
                "calls": 1,
                "input_tokens": tokens,
                "output_tokens": 0,
                "tensor_elements": 0,
                "cpu_us": 0,
                "bytes_in": 0,
                "bytes_out": 0,
                "currency": "USD",
                "cost_micros": cost,
            },
        )


def test_the_bucket_admits_its_burst_then_refuses_until_it_refills(engine: sa.Engine) -> None:
    clock = Clock()
    rule = QuotaRule("acme", "demo-vendor/iris", calls_per_second=10, burst=3)
    quotas = Quotas(engine, [rule], clock=clock)
    for _ in range(3):
        quotas.admit("acme", IRIS)
    with pytest.raises(QuotaExceeded) as refused:
        quotas.admit("acme", IRIS)
    assert str(refused.value) == (
        "tenant acme: 10 calls/s limit on model demo-vendor/iris; retry in 0.1 s"
    )
    assert refused.value.subject == "tenant:acme/model:demo-vendor/iris"
    assert refused.value.retry_after == pytest.approx(0.1)
    clock.now += 0.05  # half a token: still refused, and the retry is sooner
    with pytest.raises(QuotaExceeded) as again:
        quotas.admit("acme", IRIS)
    assert again.value.retry_after == pytest.approx(0.05)
    clock.now += 0.05
    quotas.admit("acme", IRIS)
    clock.now += 3600  # a long idle time refills to the burst, not beyond
    for _ in range(3):
        quotas.admit("acme", IRIS)
    with pytest.raises(QuotaExceeded):
        quotas.admit("acme", IRIS)


def test_a_model_rule_limits_only_that_model_and_a_tenant_rule_all(engine: sa.Engine) -> None:
    clock = Clock()
    quotas = Quotas(
        engine,
        [
            QuotaRule("acme", "demo-vendor/iris", calls_per_second=1, burst=1),
            QuotaRule("shop", calls_per_second=1, burst=2),
        ],
        clock=clock,
    )
    quotas.admit("acme", IRIS)
    with pytest.raises(QuotaExceeded):
        quotas.admit("acme", IRIS)
    for _ in range(5):
        quotas.admit("acme", CHAT)  # no rule for acme's chat calls
        quotas.admit("bank", IRIS)  # no rule for bank
    quotas.admit("shop", IRIS)
    quotas.admit("shop", CHAT)
    with pytest.raises(QuotaExceeded, match="tenant shop: 1 calls/s limit on all models"):
        quotas.admit("shop", IRIS)


def test_a_clock_behind_the_stored_one_refills_nothing(engine: sa.Engine) -> None:
    clock = Clock()
    quotas = Quotas(engine, [QuotaRule("acme", calls_per_second=1, burst=1)], clock=clock)
    quotas.admit("acme", IRIS)
    clock.now -= 60  # another replica's clock, a minute behind
    with pytest.raises(QuotaExceeded):
        quotas.admit("acme", IRIS)


def test_monthly_spend_and_token_budgets(engine: sa.Engine) -> None:
    clock = Clock()
    spend = QuotaRule("acme", monthly_spend_micros=5_000_000, currency="USD")
    tokens = QuotaRule("acme", "demo-vendor/chat", monthly_tokens=1000)
    quotas = Quotas(engine, [spend, tokens], clock=clock)
    _usage(engine, "acme", "demo-vendor/chat@2.0.0", 4_000_000, 999, 1)
    _usage(engine, "bank", "demo-vendor/chat@2.0.0", 9_000_000, 5000, 2)  # another tenant's
    _usage(engine, "acme", "demo-vendor/chatter@1.0.0", 0, 5000, 3)  # a name sharing a prefix
    quotas.admit("acme", CHAT)
    _usage(engine, "acme", "demo-vendor/chat@2.0.0", 0, 1, 4)
    with pytest.raises(QuotaExceeded) as over_tokens:
        quotas.admit("acme", CHAT)
    assert str(over_tokens.value).startswith(
        "tenant acme: monthly limit of 1000 tokens on model demo-vendor/chat reached in 2026-12 "
        "(1000 used); retry in 1468800 s"
    )
    quotas.admit("acme", IRIS)  # the token budget is the chat model's only
    _usage(engine, "acme", "demo-vendor/iris@1.0.0", 1_000_000, 0, 5)
    with pytest.raises(QuotaExceeded) as over_spend:
        quotas.admit("acme", IRIS)
    assert str(over_spend.value).startswith(
        "tenant acme: monthly spend limit of USD 5 on all models reached in 2026-12 (USD 5 spent)"
    )
    assert over_spend.value.subject == "tenant:acme"
    assert over_spend.value.retry_after == pytest.approx(17 * 86400)
    clock.now += 17 * 86400  # January: a new month, a new budget
    quotas.admit("acme", IRIS)


def test_a_tenant_without_rules_costs_no_query(engine: sa.Engine) -> None:
    statements: list[str] = []
    quotas = Quotas(engine, [QuotaRule("acme", calls_per_second=1)], clock=Clock())
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    for _ in range(10):
        quotas.admit("bank", IRIS)
    assert statements == []
    assert not Quotas(engine, [])


def test_quota_settings_say_what_to_fix() -> None:
    with pytest.raises(ConfigError, match="monthly_spend_micros needs the currency"):
        load_config(
            None, {"BROKER__METERING__QUOTAS": '[{"tenant": "a", "monthly_spend_micros": 5}]'}
        )
    with pytest.raises(ConfigError, match="calls_per_second"):
        load_config(None, {QUOTAS: '[{"tenant": "a", "calls_per_second": 0}]'})
    config = load_config(
        None,
        {QUOTAS: '[{"tenant": "a", "model": "v/m", "calls_per_second": 2}]'},
    )
    assert rules_from(config.metering.quotas) == [QuotaRule("a", "v/m", calls_per_second=2)]


def _spent_in_message(quotas: Quotas, model: ModelVersion) -> tuple[int, int]:
    """(USD micros, tokens) a check found, read from the refusal of 1-micro/1-token budgets."""
    with pytest.raises(QuotaExceeded) as refused:
        quotas.admit("acme", model)
    text = str(refused.value)
    if "tokens on" in text:
        return -1, int(text.split("(")[1].split(" used", maxsplit=1)[0])
    dollars = text.split("(USD ")[1].split(" spent", maxsplit=1)[0]
    return round(float(dollars) * 1_000_000), -1


@pytest.mark.parametrize("catch_up_leaves", [10_000, 2])
def test_budget_sums_kept_between_checks_match_the_whole_month(
    engine: sa.Engine, catch_up_leaves: int
) -> None:
    """Each check adds only what was written since the last one (or sums the month again when
    more than ``catch_up_leaves`` leaves went by); either way the figure is the month's sum,
    whoever wrote the records, and other tenants, models and currencies never count."""
    clock = Clock()
    spend = Quotas(
        engine,
        [QuotaRule("acme", monthly_spend_micros=1, currency="USD")],
        clock=clock,
        catch_up_leaves=catch_up_leaves,
    )
    tokens = Quotas(
        engine,
        [QuotaRule("acme", "demo-vendor/chat", monthly_tokens=1)],
        clock=clock,
        catch_up_leaves=catch_up_leaves,
    )
    micros_total = tokens_total = 0
    leaf = 0
    writes = [
        ("acme", "demo-vendor/chat@2.0.0", 250_000, 7, True, True),
        ("bank", "demo-vendor/chat@2.0.0", 9_000_000, 500, False, False),
        ("acme", "demo-vendor/chatter@1.0.0", 125_000, 900, True, False),
        ("acme", "demo-vendor/iris@1.0.0", 500_000, 0, True, False),
    ]
    for step in range(12):
        for _ in range(step % 4):  # 0 to 3 records between two checks
            tenant, model, cost, used, counts_spend, counts_tokens = writes[leaf % len(writes)]
            leaf += 1
            _usage(engine, tenant, model, cost, used, leaf)
            micros_total += cost if counts_spend else 0
            tokens_total += used if counts_tokens else 0
        if micros_total:
            assert _spent_in_message(spend, IRIS)[0] == micros_total
        if tokens_total:
            assert _spent_in_message(tokens, CHAT)[1] == tokens_total
    assert micros_total and tokens_total  # the loop did check something

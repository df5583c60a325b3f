"""Model prices: exact integer costs, validation with messages, storage and proto round trips."""

from __future__ import annotations

import dataclasses

import pytest

from broker.errors import InvalidArgument
from broker.registry.convert import (
    catalog_model_from_proto,
    catalog_model_to_proto,
    model_from_proto,
    model_to_proto,
)
from broker.registry.pricing import (
    MAX_PRICE_MICROS,
    Pricing,
    Units,
    check_pricing,
    cost_micros,
    format_micros,
)
from broker.registry.store import RegistryStore
from tests.unit.registry.builders import oip_model

PRICED = Pricing(
    currency="USD",
    per_call_micros=2000,
    per_input_token_micros=1,
    per_output_token_micros=3,
    per_tensor_element_micros=10,
    per_cpu_second_micros=50_000,
)


def test_cost_is_the_integer_sum_of_units_times_prices() -> None:
    units = Units(calls=1, input_tokens=7, output_tokens=5, tensor_elements=4, cpu_us=2_000_000)
    assert cost_micros(PRICED, units) == 2000 + 7 + 15 + 40 + 100_000


def test_cpu_time_is_rounded_half_up_to_a_whole_micro_once_per_call() -> None:
    per_second = Pricing(currency="EUR", per_cpu_second_micros=3)
    assert cost_micros(per_second, Units(cpu_us=166_666)) == 0  # 0.499998 micros
    assert cost_micros(per_second, Units(cpu_us=166_667)) == 1  # 0.500001 micros
    assert cost_micros(per_second, Units(cpu_us=500_000)) == 2  # 1.5 micros: half up


def test_a_free_model_costs_nothing_and_says_so() -> None:
    free = Pricing()
    assert free.is_free
    assert free.describe() == "free"
    assert cost_micros(free, Units(calls=1, input_tokens=10**6)) == 0


def test_describe_names_currency_amount_and_unit() -> None:
    assert PRICED.describe() == (
        "USD 0.002/call, 0.000001/input token, 0.000003/output token, "
        "0.00001/tensor element, 0.05/sandbox CPU second"
    )
    assert format_micros(12_500_000) == "12.5"
    assert format_micros(3_000_000) == "3"


@pytest.mark.parametrize(
    ("pricing", "message"),
    [
        (Pricing(per_call_micros=5), "model.pricing.currency is required"),
        (Pricing(currency="usd", per_call_micros=5), "ISO 4217"),
        (Pricing(currency="USDX"), "ISO 4217"),
        (Pricing(currency="USD", per_call_micros=-1), "model.pricing.per_call_micros"),
        (
            Pricing(currency="USD", per_output_token_micros=MAX_PRICE_MICROS + 1),
            "model.pricing.per_output_token_micros",
        ),
    ],
)
def test_bad_prices_are_refused_naming_the_field(pricing: Pricing, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        check_pricing(pricing)


def test_prices_survive_the_proto_both_ways() -> None:
    mv = oip_model(pricing=PRICED)
    assert model_from_proto(model_to_proto(mv)).pricing == PRICED
    assert catalog_model_from_proto(catalog_model_to_proto(mv)).pricing == PRICED
    assert not model_to_proto(oip_model()).HasField("pricing")


def test_store_keeps_prices_and_updates_them(store: RegistryStore) -> None:
    store.register(oip_model(pricing=PRICED))
    assert store.get("acme", "iris", "1.0.0").pricing == PRICED
    cheaper = dataclasses.replace(PRICED, per_call_micros=1000)
    store.update("acme", "iris", "1.0.0", {"pricing": cheaper})
    assert store.get("acme", "iris", "1.0.0").pricing == cheaper
    store.register(oip_model(version="2.0.0"))
    assert store.get("acme", "iris", "2.0.0").pricing == Pricing()


def test_store_refuses_a_price_without_currency(store: RegistryStore) -> None:
    with pytest.raises(InvalidArgument, match="currency is required"):
        store.register(oip_model(pricing=Pricing(per_call_micros=1)))

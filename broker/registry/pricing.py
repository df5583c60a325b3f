"""A model version's prices, as its vendor sets them, and the cost of one call's units.

Money is integers only: every price is in *micros*, millionths of one unit of the price's
ISO 4217 ``currency`` (1 USD = 1,000,000 micros; 1 JPY likewise), so a price of a fraction of a
cent per token is exact and no float ever touches an amount. A call's cost is the sum of
``units * price`` per unit kind; only the sandbox's CPU time, measured in microseconds of CPU
and priced per second, needs a division, and it is rounded half up to a whole micro once per
call (:func:`cost_micros`), so an invoice is the exact sum of its lines.

A model with no currency is free: every price must then be 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from broker.errors import InvalidArgument

#: Micros in one unit of a currency.
MICROS: Final = 1_000_000
#: The largest price per unit the registry accepts: one million currency units.
MAX_PRICE_MICROS: Final = 10**12
_CURRENCY_RE: Final = re.compile(r"[A-Z]{3}")
#: The price fields and the unit each one is per, in the order they are shown.
UNITS: Final = (
    ("per_call_micros", "call"),
    ("per_input_token_micros", "input token"),
    ("per_output_token_micros", "output token"),
    ("per_tensor_element_micros", "tensor element"),
    ("per_cpu_second_micros", "sandbox CPU second"),
)


@dataclass(frozen=True, slots=True)
class Pricing:
    """Prices of one model version, each in micros of ``currency`` per unit."""

    currency: str = ""
    per_call_micros: int = 0
    per_input_token_micros: int = 0
    per_output_token_micros: int = 0
    per_tensor_element_micros: int = 0
    per_cpu_second_micros: int = 0

    @property
    def is_free(self) -> bool:
        """True when no unit has a price (the model costs nothing to call)."""
        return not any(getattr(self, name) for name, _unit in UNITS)

    def describe(self) -> str:
        """The prices for people: ``USD 0.002/call, 0.000001/input token``, or ``free``."""
        if self.is_free:
            return "free"
        parts = [
            f"{format_micros(getattr(self, name))}/{unit}"
            for name, unit in UNITS
            if getattr(self, name)
        ]
        return f"{self.currency} " + ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Units:
    """What one call used, in the units prices are set in (CPU in microseconds)."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    tensor_elements: int = 0
    cpu_us: int = 0


def cost_micros(pricing: Pricing, units: Units) -> int:
    """The cost of ``units`` at ``pricing``, in micros of its currency (integers only).

    CPU time is priced per second and measured in microseconds: ``cpu_us * price / 10**6``,
    rounded half up to a whole micro (the only rounding in a call's cost).
    """
    cpu = (units.cpu_us * pricing.per_cpu_second_micros + MICROS // 2) // MICROS
    return (
        units.calls * pricing.per_call_micros
        + units.input_tokens * pricing.per_input_token_micros
        + units.output_tokens * pricing.per_output_token_micros
        + units.tensor_elements * pricing.per_tensor_element_micros
        + cpu
    )


def format_micros(micros: int) -> str:
    """``micros`` as a decimal amount of the currency unit, exactly (``2500`` -> ``0.0025``)."""
    text = format(Decimal(micros).scaleb(-6), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def check_pricing(pricing: Pricing, field: str = "model.pricing") -> None:
    """InvalidArgument naming the first price field that is not acceptable."""
    for name, _unit in UNITS:
        value = getattr(pricing, name)
        if not 0 <= value <= MAX_PRICE_MICROS:
            raise InvalidArgument(
                f"{field}.{name} must be between 0 and {MAX_PRICE_MICROS} micros "
                "(millionths of one currency unit)"
            )
    if pricing.currency and not _CURRENCY_RE.fullmatch(pricing.currency):
        raise InvalidArgument(
            f"{field}.currency must be an ISO 4217 code of three capital letters, like USD"
        )
    if not pricing.currency and not pricing.is_free:
        raise InvalidArgument(f"{field}.currency is required when a price is set (like USD)")

"""A call's usage record: what it is billed for, committed with its audit outcome entry.

The call path (:class:`broker.calls.audited.CallRecord`) measures, and this module prices:

- ``calls``: 1 when the model was called and the buyer got an answer, whole or (streamed) at
  least one chunk of it; 0 for a call refused, failed or denied before anything was delivered.
- ``input_tokens`` / ``output_tokens``: the vendor's reported usage. A stream that ends before
  the vendor reports usage (broken, or the buyer left) is billed one output token per content
  chunk delivered, the broker's own count of what was delivered; prompt tokens are then 0.
- ``tensor_elements``: the scalar values of the payload sent to the model (for an Open
  Inference Protocol model, its input tensors' elements).
- ``cpu_us``: CPU time the call used in its sandbox worker (``broker.runtimes.base.call_cpu_us``;
  0 for remote models), at the kernel's clock-tick precision.
- ``bytes_in`` / ``bytes_out``: the JSON bytes sent to the model and delivered to the buyer.

The same values go into the outcome entry (``metering``) and the ``usage_records`` row, in one
transaction, and the row names the entry's leaf index: every invoice line is provable with an
inclusion proof of that leaf, and its values are read back from the proven entry. Nothing here
holds a payload value: counts, sizes, names and amounts only.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.audit.store import Companion
from broker.metering.tables import LEAF_COLUMN, usage_records
from broker.registry.pricing import Pricing, Units, cost_micros


@dataclass(frozen=True, slots=True)
class Metered:
    """A call's billed units and their price."""

    units: Units
    bytes_in: int
    bytes_out: int
    currency: str
    cost_micros: int

    def as_audit(self) -> dict[str, int | str]:
        """The value-free form the outcome entry commits to (``metering``)."""
        units = self.units
        return {
            "calls": units.calls,
            "input_tokens": units.input_tokens,
            "output_tokens": units.output_tokens,
            "tensor_elements": units.tensor_elements,
            "cpu_us": units.cpu_us,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "currency": self.currency,
            "cost_micros": self.cost_micros,
        }


def meter(pricing: Pricing, units: Units, *, bytes_in: int, bytes_out: int) -> Metered:
    """Price ``units`` at ``pricing`` (the model version's prices when the call started)."""
    return Metered(units, bytes_in, bytes_out, pricing.currency, cost_micros(pricing, units))


def tokens_of(
    usage: Mapping[str, int] | None, *, delivered_chunks: int, streamed: bool
) -> tuple[int, int]:
    """(input, output) tokens: the vendor's usage, else a stream's delivered content chunks."""
    if usage is not None:
        return usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    return (0, delivered_chunks) if streamed else (0, 0)


def count_scalars(value: Any) -> int:
    """The scalar values in a JSON value (objects and arrays are walked, not counted)."""
    if isinstance(value, Mapping):
        return sum(count_scalars(item) for item in value.values())
    if isinstance(value, list | tuple):
        return sum(count_scalars(item) for item in value)
    return 1


def month_of(time_us: int) -> str:
    """The UTC calendar month (``YYYY-MM``) a time in microseconds since the epoch falls in."""
    return time.strftime("%Y-%m", time.gmtime(time_us // 1_000_000))


def usage_companion(
    metered: Metered,
    *,
    time_us: int,
    call_id: str,
    tenant: str,
    subject: str,
    vendor: str,
    model: str,
    status: str,
) -> Companion:
    """The ``usage_records`` row of a call, to commit with its outcome entry (leaf filled in)."""
    units = metered.units
    row = (
        call_id,
        -1,  # the outcome's leaf index, filled in inside the transaction
        time_us,
        month_of(time_us),
        tenant,
        subject,
        vendor,
        model,
        status,
        units.calls,
        units.input_tokens,
        units.output_tokens,
        units.tensor_elements,
        units.cpu_us,
        metered.bytes_in,
        metered.bytes_out,
        metered.currency,
        metered.cost_micros,
    )
    return Companion(usage_records, (row,), leaf_column=LEAF_COLUMN)

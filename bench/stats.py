"""Figures and their summaries: every number the bench reports is a ``Figure``.

A figure keeps every repeat's value, so ``results.json`` shows the spread rather than one lucky
run, and the table prints the median with min-max beside it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Figure:
    """One measured quantity across repeats, with its unit and what it was measured on."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    note: str = ""

    def add(self, value: float) -> None:
        """Record one repeat's value."""
        self.values.append(value)

    @property
    def median(self) -> float:
        """The median over repeats (NaN when nothing was recorded)."""
        return statistics.median(self.values) if self.values else float("nan")

    def to_json(self) -> dict[str, Any]:
        """The figure as results.json stores it."""
        return {
            "name": self.name,
            "unit": self.unit,
            "median": _round(self.median),
            "min": _round(min(self.values)) if self.values else None,
            "max": _round(max(self.values)) if self.values else None,
            "values": [_round(v) for v in self.values],
            "repeats": len(self.values),
            "note": self.note,
        }


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (NaN for none).

    Nearest rank, not interpolation: a p99 is then a latency some call really had.
    """
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(fraction * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def _round(value: float) -> float:
    return float(f"{value:.4g}") if value == value else value  # noqa: PLR0124 - NaN check

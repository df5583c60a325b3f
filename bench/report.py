"""The table on stdout and ``bench/results.json``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.stats import Figure

RESULTS = Path(__file__).resolve().parent / "results.json"


def format_figures(title: str, figures: list[Figure]) -> str:
    """One section as an aligned text table: figure, median, min..max, unit, repeats."""
    rows = [("figure", "median", "min..max", "unit", "n")]
    for f in figures:
        spread = f"{_num(min(f.values))}..{_num(max(f.values))}" if f.values else "-"
        rows.append((f.name, _num(f.median), spread, f.unit, str(len(f.values))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"== {title}"]
    for n, row in enumerate(rows):
        cells = [
            row[0].ljust(widths[0]),
            *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)),
        ]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _num(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) >= 0.001 else f"{value:.2g}"


def write_results(document: dict[str, Any], path: Path = RESULTS) -> Path:
    """Write results.json (ignored by git: figures belong in the README, not in history)."""
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path

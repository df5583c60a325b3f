"""Where one Invoke's CPU goes, and the floor of each stage, inside ``make bench``'s own run.

``python -m bench --profile`` (``bench.profile``) is the tool for working on a stage; this section
runs the same profile (fewer calls) after the other sections, so that ``results.json`` holds, for
the same run as the hops' ratios, each stage's CPU per call, the floors measured beside them
(``bench.profile_floors``) and the lower bound the floors set on the CPU ratio to a bare proxy:
the figures issue 12 asks for where a target is not reached.
"""

from __future__ import annotations

from typing import Any

from bench.profile import OUTSIDE, measure
from bench.sections import Section
from bench.settings import Settings
from bench.stats import Figure

CALLS = 400
QUICK_CALLS = 100


def run(settings: Settings) -> list[Figure]:
    """The profile once per repeat; each stage, floor and the bound as figures."""
    stages: dict[str, Figure] = {}
    floors: dict[str, Figure] = {}
    bound = Figure(
        "lower bound of broker CPU / proxy CPU set by the floors",
        "x",
        note="the floors one call pays over a bare proxy's; the issue's target is 1.25x",
    )
    calls = QUICK_CALLS if settings.quick else CALLS
    for _ in range(settings.repeat):
        document = measure(calls, warmup=min(100, calls))
        for name, figure in _rows(document["stages"]):
            stages.setdefault(name, Figure(f"stage: {name}", "µs/call", note=_NOTE)).add(figure)
        for name, floor in document["floors"]["floors"].items():
            times = floor["times_per_call"]
            paid = f"paid {times}x per call" if times else "shown for comparison, not paid"
            floors.setdefault(name, Figure(f"floor: {name}", "µs/call", note=paid)).add(floor["us"])
        bound.add(document["floors"]["lower_bound_ratio"])
    return [*stages.values(), *floors.values(), bound]


_NOTE = "process CPU, median over the calls of one profile"


def _rows(stages: dict[str, Any]) -> list[tuple[str, float]]:
    """(name, process µs) of each stage, and of the two parts of "outside the stages"."""
    rows = [(name, float(s["process_us"])) for name, s in stages.items() if name != OUTSIDE]
    for part, figure in stages[OUTSIDE]["parts"].items():
        rows.append((part, float(figure["process_us"])))
    return rows


SECTION = Section(
    key="stages",
    title="One Invoke stage by stage (in-process profile), with each stage's floor",
    requires=("broker.server.app",),
    run=run,
)

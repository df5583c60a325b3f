"""Timing of in-process micro-benchmarks: run a function for a fixed time budget.

A budget rather than a fixed count keeps every micro-benchmark bounded in time whatever the
machine, and at least ``min_calls`` calls keeps very slow functions from giving one sample.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any


def seconds_per_call(fn: Callable[[], Any], budget: float, *, min_calls: int = 5) -> float:
    """Mean wall seconds per call of ``fn`` over about ``budget`` seconds (GC paused)."""
    fn()  # warm: lazy imports, caches, compiled patterns
    calls = 0
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection landing in one run would be noise, not the function's cost
    try:
        start = time.perf_counter()
        stop_at = start + budget
        while calls < min_calls or time.perf_counter() < stop_at:
            fn()
            calls += 1
        return (time.perf_counter() - start) / calls
    finally:
        if gc_was_enabled:
            gc.enable()

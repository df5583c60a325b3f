"""Cost of one policy decision by each embedded engine: regorus against OPA's own Go engine.

Both decide the same input (the workload's request-direction policy input: 20 fields with their
classification labels) over the shipped bundle in ``policies/``, through a ``PolicyStore`` with
no plan cache (``PlanCache(0)``): every decision pays the key, the evaluation and the strict
parse of the plan, as a cache miss does. Measured one thread at a time, then with two threads
deciding at once (wall time per decision over both): regorus holds the GIL while it evaluates,
the OPA bindings release it (ctypes) and the engine lends each thread its own Go engine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.micro import seconds_per_call
from bench.sections import NotAvailable, Section
from bench.sections.plan_cache import policy_input
from bench.settings import Settings
from bench.stats import Figure

POLICIES = Path(__file__).resolve().parents[2] / "policies"
THREADS = 2


def _threaded_seconds_per_call(fn: Callable[[], Any], budget: float) -> float:
    """Wall seconds per call with THREADS threads calling ``fn`` for about ``budget`` seconds."""
    counts = [0] * THREADS
    stop = threading.Event()

    def work(slot: int) -> None:
        while not stop.is_set():
            fn()
            counts[slot] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(budget)
    stop.set()
    for t in threads:
        t.join()
    return (time.perf_counter() - start) / max(1, sum(counts))


def run(settings: Settings) -> list[Figure]:
    """Decide the workload's input with each engine, uncached, on 1 and on 2 threads."""
    from broker.policy.bundle import PolicyStore  # noqa: PLC0415 - optional modules
    from broker.policy.cache import PlanCache  # noqa: PLC0415
    from broker.policy.engine import RegorusEngine  # noqa: PLC0415
    from broker.policy.opa_embedded import (  # noqa: PLC0415
        OpaEmbeddedEngine,
        bindings_problem,
        versions,
    )

    problem = bindings_problem()
    if problem is not None:
        raise NotAvailable(problem)
    stores = {
        "regorus": PolicyStore(POLICIES, engine_factory=RegorusEngine, cache=PlanCache(0)),
        "opa-embedded": PolicyStore(POLICIES, engine_factory=OpaEmbeddedEngine, cache=PlanCache(0)),
    }
    for store in stores.values():
        outcome = store.reload()
        if store.revision is None:
            raise RuntimeError(f"the policy bundle did not load: {outcome}")
    item = policy_input()
    plans = {name: store.decide(item) for name, store in stores.items()}
    if plans["regorus"] != plans["opa-embedded"]:
        raise RuntimeError("regorus and OPA made different plans for the workload")
    note = f"{len(item.fields)} fields, OPA {versions()['opa']}"
    single = {
        name: Figure(f"{name}: µs per decision, 1 thread, no cache", "µs/decision", note=note)
        for name in stores
    }
    double = {
        name: Figure(f"{name}: µs per decision, {THREADS} threads (wall)", "µs/decision")
        for name in stores
    }
    ratio = Figure("opa-embedded / regorus, 1 thread", "x")
    for _ in range(settings.repeat):
        for name, store in stores.items():
            single[name].add(
                1e6 * seconds_per_call(lambda s=store: s.decide(item), settings.micro_seconds)
            )
            double[name].add(
                1e6
                * _threaded_seconds_per_call(lambda s=store: s.decide(item), settings.micro_seconds)
            )
        ratio.add(single["opa-embedded"].values[-1] / single["regorus"].values[-1])
    return [*single.values(), ratio, *double.values()]


SECTION = Section(
    key="policy_engines",
    title="policy engines: regorus vs embedded OPA",
    requires=(
        "broker.policy.bundle",
        "broker.policy.cache",
        "broker.policy.engine",
        "broker.policy.opa_embedded",
        "broker.classify.classifier",
    ),
    run=run,
)

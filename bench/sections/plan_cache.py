"""Cost of a policy decision on a plan-cache hit against a miss (a full Rego evaluation).

The input is the workload's request-direction policy input: the 20 fields with their types and
labels (schema labels and detected entities) as classification produces them, for a buyer
calling the bench model, decided by the shipped bundle in ``policies/``. A miss is measured on
a store whose cache holds nothing (``PlanCache(0)``), so it pays the key, the evaluation and
the strict parse of the plan, as a real miss does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import workload
from bench.micro import seconds_per_call
from bench.sections import NotAvailable, Section
from bench.settings import Settings
from bench.stats import Figure

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def policy_input() -> Any:
    """The workload's request-direction ``PolicyInput``."""
    from broker.classify.classifier import classify  # noqa: PLC0415 - optional modules
    from broker.policy.contract import (  # noqa: PLC0415
        EntityInfo,
        FieldInfo,
        ModelInfo,
        PolicyInput,
        PrincipalInfo,
    )

    found = classify(workload.payload(), schema_labels=workload.schema_labels())
    return PolicyInput(
        direction="request",
        principal=PrincipalInfo(
            tenant=workload.BUYER_TENANT, subject="bench-buyer-svc", roles=("buyer",)
        ),
        model=ModelInfo(
            id=workload.MODEL_REF,
            vendor=workload.VENDOR_TENANT,
            version=workload.MODEL_VERSION,
            runtime="open_inference_grpc",
        ),
        purpose="support",
        fields=tuple(FieldInfo(f.pointer, f.type, tuple(sorted(f.labels))) for f in found.fields),
        entities=tuple(EntityInfo(label, tuple(paths)) for label, paths in found.entities.items()),
    )


def run(settings: Settings) -> list[Figure]:
    """Decide the same input through a warm cache and through no cache."""
    from broker.policy.cache import PlanCache  # noqa: PLC0415
    from broker.policy.store import PolicyStore  # noqa: PLC0415 - optional module

    if not POLICIES.is_dir():
        raise NotAvailable(f"no policy bundle at {POLICIES}")
    cached, uncached = PolicyStore(POLICIES), PolicyStore(POLICIES, cache=PlanCache(0))
    for store in (cached, uncached):
        outcome = store.reload()
        if store.revision is None:
            raise RuntimeError(f"the policy bundle did not load: {outcome}")
    item = policy_input()
    plan = cached.decide(item)
    hit = Figure("policy decision, plan-cache hit", "µs/decision")
    miss = Figure(
        "policy decision, plan-cache miss (Rego)",
        "µs/decision",
        note=f"{len(item.fields)} fields, allow={plan.allow}",
    )
    ratio = Figure("miss/hit cost ratio", "x")
    for _ in range(settings.repeat):
        h = seconds_per_call(lambda: cached.decide(item), settings.micro_seconds)
        m = seconds_per_call(lambda: uncached.decide(item), settings.micro_seconds)
        hit.add(h * 1e6)
        miss.add(m * 1e6)
        ratio.add(m / h)
    return [hit, miss, ratio]


SECTION = Section(
    key="plan_cache",
    title="policy plan cache",
    requires=(
        "broker.policy.store",
        "broker.policy.cache",
        "broker.policy.contract",
        "broker.classify.classifier",
    ),
    run=run,
)

"""The metric definitions, the bounded label values, and the dashboard that reads them."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

from broker.observability import metrics
from broker.observability.metrics import BoundedValues, outcome_of

DASHBOARD = Path(__file__).resolve().parents[3] / "examples/observability/grafana-dashboard.json"


def test_label_values_beyond_the_bound_count_as_other() -> None:
    bounded = BoundedValues(limit=2)
    assert [bounded(v) for v in ("a", "b", "a", "c", "d", "b")] == [
        "a",
        "b",
        "a",
        "other",
        "other",
        "b",
    ]


def test_outcomes_separate_the_callers_mistakes_from_the_brokers_failures() -> None:
    assert outcome_of("OK") == "ok"
    assert outcome_of("PERMISSION_DENIED") == outcome_of("INVALID_ARGUMENT") == "refused"
    assert outcome_of("UNAVAILABLE") == outcome_of("INTERNAL") == "failed"
    assert outcome_of("CANCELLED") == "cancelled"


def test_every_series_the_dashboard_queries_is_one_the_broker_serves() -> None:
    served = {
        sample_name
        for family in REGISTRY.collect()
        if family.name.startswith("broker_")
        for sample_name in _sample_names(family.name, family.type)
    }
    queried = set(re.findall(r"broker_[a-z_]+", DASHBOARD.read_text()))
    assert queried, "the dashboard queries nothing"
    assert queried <= served, f"not served: {sorted(queried - served)}"
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len(panels) >= 10 and all(panel["targets"] for panel in panels)


def _sample_names(name: str, kind: str) -> set[str]:
    if kind == "counter":
        return {f"{name}_total"}
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    return {name}


def test_nothing_is_recorded_until_metrics_are_enabled() -> None:
    before = REGISTRY.get_sample_value("broker_plan_cache_lookups_total", {"result": "hit"}) or 0
    was = metrics.enabled()
    metrics.enable(False)
    try:
        metrics.count_plan_lookup(hit=True)
        assert (
            REGISTRY.get_sample_value("broker_plan_cache_lookups_total", {"result": "hit"}) or 0
        ) == before
        metrics.enable(True)
        metrics.count_plan_lookup(hit=True)
        assert (
            REGISTRY.get_sample_value("broker_plan_cache_lookups_total", {"result": "hit"})
            == before + 1
        )
    finally:
        metrics.enable(was)

"""The short form of ``make soak`` that every test run (and CI) makes (issue 16, item 4).

``SOAK_SECONDS`` (40 by default here, after 20 s of unsampled warm-up) of the soak's mixed
load on a real broker process; the same bounds as the long run (``tests.battery.soak.BOUNDS``)
on the slope of each resource curve over the second half, no failed call, and every answered
call's intent and outcome in the log.
In CI the sandboxed model must be part of the load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from broker.runtimes.sandbox.probe import sandbox_support
from tests.battery.soak import BOUNDS, run_soak
from tests.conftest import IN_CI

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("SOAK_SECONDS", "40"))
WARMUP_S = 20.0  # the call pools grow in the first minute; see run_soak's ``warmup``


def test_a_short_soak_keeps_every_resource_curve_flat(tmp_path: Path) -> None:
    figures = run_soak(
        SECONDS, tmp_path / "var", f"sqlite:///{tmp_path / 'broker.db'}", warmup=WARMUP_S
    )
    print("soak figures:", json.dumps(figures))
    assert figures["failure_count"] == 0, figures["failures"]
    assert figures["audit_gaps"] == {"no_outcome": [], "intent_without_outcome": []}
    calls = figures["calls"]
    assert isinstance(calls, dict)
    kinds = {"invoke", "stream", "preview", "list_models", "vendor_models", "audit_query"}
    assert kinds <= {kind for kind, count in calls.items() if count > 0}, calls
    if IN_CI or not sandbox_support():
        assert calls.get("sandbox", 0) > 0, "the sandboxed model took no part in the load"
    curves = figures["curves"]
    assert isinstance(curves, dict) and set(curves) == set(BOUNDS)
    over = {n: c for n, c in curves.items() if c["slope_per_s_second_half"] > c["bound_per_s"]}
    assert over == {}, over
    figures_dir = tmp_path / "var" / "battery-figures"
    assert (figures_dir / "soak.csv").read_text().startswith("t,rss_bytes,open_fds")
    assert json.loads((figures_dir / "soak.json").read_text())["calls"] == calls

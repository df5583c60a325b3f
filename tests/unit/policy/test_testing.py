"""`broker policy test`: every test_ rule runs, results and coverage are reported.

Each test runs with regorus and with the embedded OPA engine (``--engine opa-embedded``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from broker.policy.testing import TestEngine, render_report, run_bundle_tests
from tests.unit.policy.conftest import SHIPPED_BUNDLE

WriteBundle = Callable[[dict[str, str]], Path]


@pytest.fixture(params=["regorus", "opa-embedded"])
def engine(request: pytest.FixtureRequest) -> TestEngine:
    """Each test once per engine (OPA's needs the bindings: skipped outside CI without them)."""
    if request.param == "opa-embedded":
        request.getfixturevalue("opa_bindings_present")
    name: TestEngine = request.param
    return name


def test_shipped_bundle_tests_all_pass_with_coverage(engine: TestEngine) -> None:
    report = run_bundle_tests(SHIPPED_BUNDLE, engine=engine)
    failed = [(r.name, r.error) for r in report.results if not r.passed]
    assert failed == []
    assert len(report.results) >= 25
    assert report.ok
    coverage = {c.file: c for c in report.coverage}
    assert coverage["broker/decision.rego"].percent >= 90.0
    assert not coverage["broker/decision.rego"].is_test
    assert coverage["broker/decision_test.rego"].is_test
    text = render_report(report)
    assert "PASS  data.broker_test.test_secrets_always_redacted" in text
    assert "broker/decision.rego" in text
    assert f"{len(report.results)}/{len(report.results)} tests passed" in text


def test_failures_and_errors_are_reported(write_bundle: WriteBundle, engine: TestEngine) -> None:
    root = write_bundle(
        {
            "lib/lib.rego": "package lib\n\nimport rego.v1\n\ndouble(x) := x * 2\n\nunused := 1\n",
            "lib/lib_test.rego": (
                "package lib_test\n\nimport rego.v1\n\nimport data.lib\n\n"
                "test_ok if lib.double(2) == 4\n\n"
                "test_wrong if lib.double(2) == 5\n\n"
                "test_boom if 1 / 0\n\n"
                "test_value := 7\n\n"
                "todo_test_later if false\n\n"
                "helper(x) := x\n"
            ),
        }
    )
    report = run_bundle_tests(root, engine=engine)
    results = {r.name: r for r in report.results}
    assert set(results) == {"test_ok", "test_wrong", "test_boom", "test_value"}
    assert results["test_ok"].passed
    assert results["test_value"].passed, "defined and not false passes, as in opa test"
    assert not results["test_wrong"].passed and results["test_wrong"].error is None
    assert not results["test_boom"].passed
    assert "divide by zero" in (results["test_boom"].error or "")
    assert not report.ok
    lib = next(c for c in report.coverage if c.file == "lib/lib.rego")
    assert 0 < lib.percent < 100
    text = render_report(report)
    assert "FAIL  data.lib_test.test_wrong" in text
    assert re.search(r"\n +error: (eval_builtin_error: div: )?divide by zero\n", text), text
    assert "not covered: lines 7" in text


def test_bundle_without_tests_is_not_ok(write_bundle: WriteBundle, engine: TestEngine) -> None:
    report = run_bundle_tests(write_bundle({"p.rego": "package p\n\nx := 1\n"}), engine=engine)
    assert not report.ok
    assert "no tests found" in render_report(report)


@pytest.mark.usefixtures("opa_bindings_present")
def test_both_engines_find_and_judge_the_same_tests() -> None:
    regorus = run_bundle_tests(SHIPPED_BUNDLE, engine="regorus")
    opa = run_bundle_tests(SHIPPED_BUNDLE, engine="opa-embedded")
    assert [(r.package, r.name, r.file, r.passed) for r in regorus.results] == [
        (r.package, r.name, r.file, r.passed) for r in opa.results
    ]

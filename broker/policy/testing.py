"""Run a bundle's Rego unit tests with regorus, with coverage (``broker policy test``).

Every rule whose name starts with ``test_`` in any package of the bundle is a test (functions
and ``todo_test_`` rules are not). As in ``opa test``, a test passes when it is defined and not
``false``; an evaluation error fails it with the error text. Coverage is regorus's line coverage
over every file after all tests ran; the policy files' numbers are what tells a security team
which rules no test exercised.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.policy.bundle import Bundle, load_bundle
from broker.policy.engine import build_regorus_engine, regorus_error_text


@dataclass(frozen=True, slots=True)
class TestResult:
    """One test rule's outcome; ``error`` holds the evaluation error if there was one."""

    __test__ = False  # not a pytest class

    package: str
    name: str
    file: str
    passed: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class FileCoverage:
    """Line coverage of one file: lines regorus evaluated and lines it could have."""

    file: str
    covered: tuple[int, ...]
    not_covered: tuple[int, ...]
    is_test: bool

    @property
    def percent(self) -> float:
        """Covered lines as a percentage of coverable lines (100 when nothing is coverable)."""
        total = len(self.covered) + len(self.not_covered)
        return 100.0 if total == 0 else 100.0 * len(self.covered) / total


@dataclass(frozen=True, slots=True)
class TestReport:
    """Everything ``broker policy test`` prints; ``ok`` decides its exit status."""

    __test__ = False

    revision: str
    results: tuple[TestResult, ...]
    coverage: tuple[FileCoverage, ...]

    @property
    def ok(self) -> bool:
        """True when there is at least one test and every test passed."""
        return bool(self.results) and all(r.passed for r in self.results)

    @property
    def policy_coverage(self) -> float:
        """Line coverage over the policy files only (tests excluded)."""
        covered = sum(len(c.covered) for c in self.coverage if not c.is_test)
        total = covered + sum(len(c.not_covered) for c in self.coverage if not c.is_test)
        return 100.0 if total == 0 else 100.0 * covered / total


def _ref_name(node: Any) -> str | None:
    if isinstance(node, dict) and isinstance(node.get("Var"), dict):
        value = node["Var"].get("value")
        return value if isinstance(value, str) else None
    return None


def _package_name(node: Any) -> str:
    """Dotted name of an AST package reference (``Var`` or nested ``RefDot``)."""
    if _ref_name(node) is not None:
        return str(_ref_name(node))
    dot = node.get("RefDot") if isinstance(node, dict) else None
    if isinstance(dot, dict):
        field = dot.get("field")
        last = field[1] if isinstance(field, list) and len(field) == 2 else "?"
        return f"{_package_name(dot.get('refr'))}.{last}"
    return "?"


def discover_tests(engine: Any) -> list[tuple[str, str, str]]:
    """(package, rule name, file) of every ``test_`` rule, from regorus's AST, in file order."""
    found: list[tuple[str, str, str]] = []
    for module in json.loads(engine.get_ast_as_json()):
        file = module["source"]["file"]
        ast = module["ast"]
        package = _package_name(ast["package"]["refr"])
        seen: set[str] = set()
        for rule in ast.get("rules", []):
            spec = rule.get("Spec") if isinstance(rule, dict) else None
            head = spec.get("head", {}) if isinstance(spec, dict) else {}
            if not isinstance(head, dict) or "Compr" not in head:
                continue  # functions, partial sets and default rules are not tests
            name = _ref_name(head["Compr"].get("refr"))
            if name and name.startswith("test_") and name not in seen:
                seen.add(name)
                found.append((package, name, file))
    return found


def _run(engine: Any) -> tuple[list[TestResult], dict[str, Any]]:
    engine.set_enable_coverage(True)
    results: list[TestResult] = []
    for package, name, file in discover_tests(engine):
        try:
            value = engine.eval_rule(f"data.{package}.{name}")
        except BaseException as exc:  # a test's error (even a Rust panic) is its result
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            results.append(TestResult(package, name, file, False, regorus_error_text(exc)[0]))
            continue
        results.append(TestResult(package, name, file, value is not None and value is not False))
    report: dict[str, Any] = json.loads(engine.get_coverage_report_as_json())
    return results, report


def run_tests(bundle: Bundle) -> TestReport:
    """Run every test of ``bundle`` in one coverage-enabled engine on this thread."""
    engine = build_regorus_engine(bundle, include_tests=True)
    try:
        results, report = _run(engine)
    except Exception as exc:
        # The traceback's frames hold the engine; clear them so that a caller keeping the
        # exception does not make another thread's garbage collection drop it (unsendable).
        traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        del engine
    coverage = tuple(
        FileCoverage(
            file=item["path"],
            covered=tuple(item.get("covered", [])),
            not_covered=tuple(item.get("not_covered", [])),
            is_test=item["path"].endswith("_test.rego"),
        )
        for item in report.get("files", [])
    )
    return TestReport(bundle.revision, tuple(results), coverage)


def run_bundle_tests(root: Path | str) -> TestReport:
    """Load the bundle at ``root`` and run its tests (a load error raises PolicyLoadError)."""
    return run_tests(load_bundle(root))


def render_report(report: TestReport) -> str:
    """A human report: one line per test, coverage per file, a summary line."""
    lines = [f"policy bundle {report.revision}", ""]
    for r in report.results:
        status = "PASS" if r.passed else "FAIL"
        lines.append(f"  {status}  data.{r.package}.{r.name}  ({r.file})")
        if r.error:
            lines.append(f"        error: {r.error}")
    lines += ["", "coverage:"]
    for c in report.coverage:
        kind = " (tests)" if c.is_test else ""
        lines.append(f"  {c.percent:6.1f}%  {c.file}{kind}")
        if c.not_covered and not c.is_test:
            lines.append(f"          not covered: lines {', '.join(map(str, c.not_covered))}")
    passed = sum(r.passed for r in report.results)
    lines += [
        "",
        f"{passed}/{len(report.results)} tests passed; "
        f"policy coverage {report.policy_coverage:.1f}%"
        + ("" if report.results else " (no tests found: that is a failure)"),
    ]
    return "\n".join(lines)

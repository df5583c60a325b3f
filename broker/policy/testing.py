"""Run a bundle's Rego unit tests, with coverage (``broker policy test [--engine ...]``).

Every rule whose name starts with ``test_`` in any package of the bundle is a test (functions
and ``todo_test_`` rules are not). As in ``opa test``, a test passes when it is defined and not
``false``; an evaluation error fails it with the error text. Coverage is the engine's line
coverage over every file after all tests ran; the policy files' numbers are what tells a
security team which rules no test exercised.

With regorus (the default) tests are found in regorus's AST and coverage is regorus's own. With
the embedded OPA engine (``engine="opa-embedded"``) tests are found in the AST of OPA's own
parser (``rego.parse_module``), each test is evaluated with OPA's coverage tracer, and a line
counts as covered when any test covered it (OPA reports expression ranges; a range covers each
of its lines).
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from broker.policy.bundle import Bundle, load_bundle
from broker.policy.engine import build_regorus_engine, regorus_error_text
from broker.policy.opa_embedded import (
    Opa,
    OpaCallError,
    OpaUndefinedDocument,
    build_opa,
    module_asts,
    opa_error_text,
    package_name,
)

TestEngine = Literal["regorus", "opa-embedded"]


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


def run_tests(bundle: Bundle, *, engine: TestEngine = "regorus") -> TestReport:
    """Run every test of ``bundle`` in one coverage-enabled engine on this thread."""
    if engine == "opa-embedded":
        return _run_tests_opa(bundle)
    return _run_tests_regorus(bundle)


def _run_tests_regorus(bundle: Bundle) -> TestReport:
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


def discover_opa_tests(asts: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str, str]]:
    """(package, rule name, file) of every ``test_`` rule, from OPA's AST, in file order."""
    found: list[tuple[str, str, str]] = []
    for file, ast in asts:
        package = package_name(ast).removeprefix("data.")
        seen: set[str] = set()
        for rule in ast.get("rules", []):
            head = rule.get("head", {}) if isinstance(rule, dict) else {}
            if rule.get("default") or head.get("args") or "key" in head:
                continue  # default rules, functions and partial sets/objects are not tests
            name = head.get("name")
            if isinstance(name, str) and name.startswith("test_") and name not in seen:
                seen.add(name)
                found.append((package, name, file))
    return found


def _rows(ranges: object) -> set[int]:
    rows: set[int] = set()
    for item in ranges if isinstance(ranges, list) else []:
        start, end = item.get("start", {}).get("row"), item.get("end", {}).get("row")
        if isinstance(start, int) and isinstance(end, int):
            rows.update(range(start, end + 1))
    return rows


def _run_tests_opa(bundle: Bundle) -> TestReport:
    opa: Opa = build_opa(bundle, include_tests=True)
    try:
        tests = discover_opa_tests(module_asts(opa, bundle.policies + bundle.tests))
        results: list[TestResult] = []
        covered: dict[str, set[int]] = {}
        missed: dict[str, set[int]] = {}
        for package, name, file in tests:
            try:
                value, report = opa.document(f"{package}.{name}", None, coverage=True)
            except OpaUndefinedDocument:
                results.append(TestResult(package, name, file, False))
                continue
            except OpaCallError as exc:
                results.append(
                    TestResult(package, name, file, False, opa_error_text(exc.message)[0])
                )
                continue
            results.append(TestResult(package, name, file, value is not False))
            for path, lines in (report or {}).get("files", {}).items():
                covered.setdefault(path, set()).update(_rows(lines.get("covered")))
                missed.setdefault(path, set()).update(_rows(lines.get("not_covered")))
    finally:
        opa.close()
    coverage = tuple(
        FileCoverage(
            file=path,
            covered=tuple(sorted(covered.get(path, set()))),
            not_covered=tuple(sorted(missed.get(path, set()) - covered.get(path, set()))),
            is_test=path.endswith("_test.rego"),
        )
        for path in sorted(set(covered) | set(missed))
    )
    return TestReport(bundle.revision, tuple(results), coverage)


def run_bundle_tests(root: Path | str, *, engine: TestEngine = "regorus") -> TestReport:
    """Load the bundle at ``root`` and run its tests (a load error raises PolicyLoadError)."""
    return run_tests(load_bundle(root), engine=engine)


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

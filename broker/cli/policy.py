"""``broker policy``: test and evaluate a policy bundle locally, before shipping it.

    broker policy test [--bundle policies] [--engine E]               every test_ rule, coverage
    broker policy eval --input call.json [--bundle DIR] [--engine E]  the plan for one input

Both work on the files, with an engine the broker embeds (``regorus``, the default, or
``opa-embedded``: OPA's own Go engine); no broker is needed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from broker.policy import PolicyEngine, PolicyError, PolicyInput, RegorusEngine, load_bundle
from broker.policy.opa_embedded import OpaEmbeddedEngine, bindings_problem
from broker.policy.testing import render_report, run_bundle_tests

ENGINES = ("regorus", "opa-embedded")


def register(sub: Any) -> None:
    """Add ``policy test`` and ``policy eval``."""
    parser = sub.add_parser("policy", help="test and evaluate Rego policy bundles")
    actions = parser.add_subparsers(dest="policy_command", required=True, metavar="ACTION")

    test = actions.add_parser("test", help="run every test_ rule; show pass/fail and coverage")
    test.add_argument("--bundle", type=Path, default=Path("policies"), help="bundle directory")
    test.add_argument("--engine", choices=ENGINES, default="regorus", help="Rego engine")
    test.set_defaults(handler=run_test)

    evaluate = actions.add_parser("eval", help="print the plan the policy makes for an input")
    evaluate.add_argument("--bundle", type=Path, default=Path("policies"), help="bundle directory")
    evaluate.add_argument("--input", type=Path, required=True, help="policy input JSON file")
    evaluate.add_argument("--rule", default="data.broker.decision", help="rule to evaluate")
    evaluate.add_argument("--engine", choices=ENGINES, default="regorus", help="Rego engine")
    evaluate.set_defaults(handler=run_eval)


def _engine_available(name: str) -> bool:
    problem = bindings_problem() if name == "opa-embedded" else None
    if problem is not None:
        print(f"broker: --engine opa-embedded cannot run: {problem}", file=sys.stderr)
    return problem is None


def run_test(args: argparse.Namespace) -> int:
    """Run the bundle's tests; exit 0 only when every test passes."""
    if not _engine_available(args.engine):
        return 2
    report = run_bundle_tests(args.bundle, engine=args.engine)
    print(render_report(report))
    return 0 if report.ok else 1


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate the bundle on one input and print the checked plan as JSON."""
    try:
        document = orjson.loads(args.input.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{args.input} is not valid JSON: {exc}") from None
    policy_input = PolicyInput.from_json_obj(document)
    if not _engine_available(args.engine):
        return 2
    bundle = load_bundle(args.bundle)
    engine: PolicyEngine = (
        OpaEmbeddedEngine(bundle, rule=args.rule)
        if args.engine == "opa-embedded"
        else RegorusEngine(bundle, rule=args.rule)
    )
    try:
        plan = engine.decide(policy_input)
    except PolicyError as exc:
        print(f"broker: the policy denies by failing: {exc.message}", file=sys.stderr)
        return 1
    sys.stdout.write(orjson.dumps(plan.to_json_obj(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0

"""What both in-process engines promise alike: plans from tiny bundles, denials, load errors.

Each test runs once on regorus and once on OPA's embedded Go engine (which skips with how to
install it when absent, and fails in CI). Engine-specific behaviour (threads, pools, error text
parsing) stays in test_engine.py and test_opa_embedded.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.policy.bundle import Bundle, load_bundle
from broker.policy.contract import Action, PolicyError, PolicyLoadError
from broker.policy.engine import RegorusEngine
from broker.policy.opa_embedded import OpaEmbeddedEngine
from tests.unit.policy.conftest import TINY_POLICY, make_input

WriteBundle = Callable[[dict[str, str]], Path]
MakeEngine = Callable[..., Any]


@pytest.fixture(params=["regorus", "opa-embedded"])
def make_engine(request: pytest.FixtureRequest) -> Iterator[MakeEngine]:
    """Builds an engine of this run's kind; OPA engines are closed after the test."""
    if request.param == "opa-embedded":
        request.getfixturevalue("opa_bindings_present")  # skips (fails in CI) without OPA
    built: list[OpaEmbeddedEngine] = []

    def make(bundle: Bundle, **kwargs: str) -> Any:
        if request.param == "regorus":
            return RegorusEngine(bundle, **kwargs)
        engine = OpaEmbeddedEngine(bundle, **kwargs)
        built.append(engine)
        return engine

    yield make
    for engine in built:
        engine.close()


def test_tiny_bundle_with_data(make_engine: MakeEngine, write_bundle: WriteBundle) -> None:
    root = write_bundle(
        {"broker/policy.rego": TINY_POLICY, "broker/data.json": '{"action": "hash"}'}
    )
    plan = make_engine(load_bundle(root)).decide(make_input())
    assert set(plan.fields.values()) == {Action("hash")}


def test_configurable_rule(make_engine: MakeEngine, write_bundle: WriteBundle) -> None:
    root = write_bundle(
        {"acme/p.rego": 'package acme.pdp\n\nimport rego.v1\n\nplan := {"allow": true}\n'}
    )
    plan = make_engine(load_bundle(root), rule="data.acme.pdp.plan").decide(make_input())
    assert plan.allow
    assert set(plan.fields.values()) == {Action("redact")}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("decision := 42", "must be an object"),
        ('decision := {"allow": true, "fields": {"/nope": {"action": "allow"}}}', "not in the"),
        ('decision := {"allow": true, "fields": {"/customer/name": "x"}}', "unknown action"),
        ("decision := x if { x := {}; input.nothing }", "undefined"),
        ("decision := 1 / count([])", "evaluation error"),
        ('decision := {"allow": true, "n": to_number("x")}', "evaluation error"),
    ],
)
def test_bad_policy_output_or_throw_denies(
    make_engine: MakeEngine, write_bundle: WriteBundle, body: str, fragment: str
) -> None:
    root = write_bundle({"p.rego": f"package broker\n\nimport rego.v1\n\n{body}\n"})
    with pytest.raises(PolicyError) as info:
        make_engine(load_bundle(root)).decide(make_input())
    assert fragment in info.value.reason
    assert "Stack backtrace" not in info.value.message


def test_syntax_error_names_file_and_line(
    make_engine: MakeEngine, write_bundle: WriteBundle
) -> None:
    root = write_bundle({"broker/p.rego": "package broker\n\nallow if {\n  input.x ==\n}\n"})
    with pytest.raises(PolicyLoadError) as info:
        make_engine(load_bundle(root))
    assert info.value.file == "broker/p.rego"
    assert info.value.line == 5


def test_missing_package_is_load_error(make_engine: MakeEngine, write_bundle: WriteBundle) -> None:
    root = write_bundle({"p.rego": "package other\n\nx := 1\n", "broker/data.json": "{}"})
    with pytest.raises(PolicyLoadError, match="no policy defines package broker"):
        make_engine(load_bundle(root))

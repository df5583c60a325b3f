"""OpaEmbeddedEngine (OPA's Go engine in process): plans, failures, load errors, threads, config.

These run the real engine from ``opa-golib-python-bindings``; without it they skip with how to
install it, and fail in CI.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from broker.policy.bundle import PolicyStore, load_bundle
from broker.policy.contract import Action, PolicyError, PolicyInput, PolicyLoadError
from broker.policy.engine import PolicyEngine
from broker.policy.opa_embedded import OpaEmbeddedEngine, opa_error_text
from tests.unit.policy.conftest import SHIPPED_BUNDLE, TINY_POLICY, make_input

WriteBundle = Callable[[dict[str, str]], Path]

pytestmark = pytest.mark.usefixtures("opa_bindings_present")


@pytest.fixture(scope="module")
def shipped() -> OpaEmbeddedEngine:
    return OpaEmbeddedEngine(load_bundle(SHIPPED_BUNDLE))


def test_is_a_policy_engine(shipped: OpaEmbeddedEngine) -> None:
    assert isinstance(shipped, PolicyEngine)
    assert shipped.revision == load_bundle(SHIPPED_BUNDLE).revision
    assert shipped.rule == "data.broker.decision"


def test_realistic_request_to_remote_model(shipped: OpaEmbeddedEngine, call: PolicyInput) -> None:
    plan = shipped.decide(call)
    assert plan.allow, plan.reasons
    f = plan.fields
    assert len(f) == 20
    assert f["/customer/email"] == Action("tokenize")
    assert f["/payment/card"] == Action("mask", keep_last=4, char="*")
    assert f["/session/ip"] == Action("hash")
    assert f["/session/token"] == Action("redact")
    assert f["/ticket/body"] == Action("encrypt")
    assert f["/ticket/medical_notes"] == Action("sandbox")
    assert f["/ticket/subject"] == Action("allow")
    assert plan.entities == {"pii.email": Action("tokenize"), "secret.jwt": Action("redact")}


def test_denials_and_tenant_settings(shipped: OpaEmbeddedEngine) -> None:
    marketing = shipped.decide(make_input(purpose="marketing"))
    assert not marketing.allow
    assert "label pii.national_id.cn may not be used for purpose marketing" in marketing.reasons
    acme = shipped.decide(make_input(tenant="acme"))
    assert (acme.retention.request_ttl_s, acme.retention.response_ttl_s) == (604800, 2592000)
    globex = shipped.decide(make_input(tenant="globex", vendor="shadyai"))
    assert globex.reasons == ("tenant globex does not allow vendor shadyai",)
    assert globex.fields["/ticket/medical_notes"] == Action("drop")


def test_tiny_bundle_with_data(write_bundle: WriteBundle) -> None:
    root = write_bundle(
        {"broker/policy.rego": TINY_POLICY, "broker/data.json": '{"action": "hash"}'}
    )
    plan = OpaEmbeddedEngine(load_bundle(root)).decide(make_input())
    assert set(plan.fields.values()) == {Action("hash")}


def test_configurable_rule(write_bundle: WriteBundle) -> None:
    root = write_bundle(
        {"acme/p.rego": 'package acme.pdp\n\nimport rego.v1\n\nplan := {"allow": true}\n'}
    )
    plan = OpaEmbeddedEngine(load_bundle(root), rule="data.acme.pdp.plan").decide(make_input())
    assert plan.allow
    assert set(plan.fields.values()) == {Action("redact")}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("decision := 42", "must be an object"),
        ('decision := {"allow": true, "fields": {"/nope": {"action": "allow"}}}', "not in the"),
        ('decision := {"allow": true, "fields": {"/customer/name": "x"}}', "unknown action"),
        ("decision := x if { x := {}; input.nothing }", "undefined"),
        ("decision := 1 / count([])", "evaluation error at p.rego:5: eval_builtin_error"),
        ('decision := {"allow": true, "n": to_number("x")}', "evaluation error"),
        (
            'decision := {"allow": true} if input.direction\ndecision := {"allow": false}',
            "eval_conflict_error",
        ),
    ],
)
def test_bad_policy_output_or_throw_denies(
    write_bundle: WriteBundle, body: str, fragment: str
) -> None:
    root = write_bundle({"p.rego": f"package broker\n\nimport rego.v1\n\n{body}\n"})
    with pytest.raises(PolicyError) as info:
        OpaEmbeddedEngine(load_bundle(root)).decide(make_input())
    assert fragment in info.value.reason


def test_syntax_error_names_file_and_line(write_bundle: WriteBundle) -> None:
    root = write_bundle({"broker/p.rego": "package broker\n\nallow if {\n  input.x ==\n}\n"})
    with pytest.raises(PolicyLoadError) as info:
        OpaEmbeddedEngine(load_bundle(root))
    assert info.value.file == "broker/p.rego"
    assert info.value.line == 5
    assert "rego_parse_error" in info.value.reason


def test_compile_error_is_a_load_error(write_bundle: WriteBundle) -> None:
    """OPA compiles lazily; the engine compiles at load, so an unsafe variable never serves."""
    root = write_bundle(
        {
            "broker/ok.rego": "package broker\n\nimport rego.v1\n\ndecision := {}\n",
            "broker/q.rego": "package broker\n\nimport rego.v1\n\nx := y if {\n  z := 1\n}\n",
        }
    )
    with pytest.raises(PolicyLoadError) as info:
        OpaEmbeddedEngine(load_bundle(root))
    assert (info.value.file, info.value.line) == ("broker/q.rego", 5)
    assert "rego_unsafe_var_error" in info.value.reason


def test_missing_package_is_load_error(write_bundle: WriteBundle) -> None:
    root = write_bundle({"p.rego": "package other\n\nx := 1\n", "broker/data.json": "{}"})
    with pytest.raises(PolicyLoadError, match="no policy defines package broker"):
        OpaEmbeddedEngine(load_bundle(root))


def test_store_keeps_the_old_revision_when_a_reload_fails(write_bundle: WriteBundle) -> None:
    root = write_bundle(
        {"broker/policy.rego": TINY_POLICY, "broker/data.json": '{"action": "hash"}'}
    )
    store = PolicyStore(root, engine_factory=OpaEmbeddedEngine)
    assert store.reload().status == "loaded"
    good = store.revision
    (root / "broker" / "policy.rego").write_text("package broker\n\ndecision := {\n")
    outcome = store.reload()
    assert outcome.status == "failed"
    assert (outcome.error or "").startswith("broker/policy.rego:4: rego_parse_error")
    assert store.revision == good
    assert store.decide(make_input()).allow


def test_error_text_without_location() -> None:
    assert opa_error_text("engine has been closed") == ("engine has been closed", None, None)


def test_input_that_is_not_json_denies(shipped: OpaEmbeddedEngine) -> None:
    odd = make_input()
    odd = PolicyInput(
        direction=odd.direction,
        principal=type(odd.principal)("t", "s", (), {"when": object()}),
        model=odd.model,
        purpose=odd.purpose,
    )
    with pytest.raises(PolicyError) as info:
        shipped.decide(odd)
    assert info.value.reason == "the policy input is not JSON"
    surrogate = make_input(fields=(("/\ud800", "string", ()),), entities=())
    with pytest.raises(PolicyError) as info:
        shipped.decide(surrogate)
    assert info.value.reason == "the policy input is not JSON"


def test_threads_share_a_bounded_pool(write_bundle: WriteBundle) -> None:
    """Concurrent decisions agree, and never build more engines than the pool allows."""
    engine = OpaEmbeddedEngine(load_bundle(SHIPPED_BUNDLE), max_engines=2)
    expected = engine.decide(make_input())
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                assert engine.decide(make_input()) == expected
        except BaseException as exc:  # noqa: BLE001 - asserted on the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert engine._idle.qsize() <= 2
    engine.close()
    assert engine._idle.qsize() == 0


def test_missing_bindings_refuse_to_start_with_how_to_install(tmp_path: Path) -> None:
    """With the package absent (its import blocked), `broker serve` would stop at a ConfigError."""
    script = f"""
import sys
sys.modules["opa_bindings"] = None  # what Python does for a package that is not installed
from broker.config import ConfigError, load_config
from broker.server.app import build_policy_store
config = load_config(None, {{"BROKER__POLICY__ENGINE": "opa-embedded",
                             "BROKER__POLICY__BUNDLE_DIR": {str(SHIPPED_BUNDLE)!r},
                             "BROKER__DATA_DIR": {str(tmp_path)!r}}})
try:
    build_policy_store(config)
except ConfigError as exc:
    print(exc)
    raise SystemExit(3)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 3, done.stderr
    assert 'engine = "opa-embedded" cannot run' in done.stdout
    assert (
        "--ignore-requires-python --require-hashes -r requirements-opa-embedded.txt" in done.stdout
    )
    assert "opa-golib-python-bindings==0.4.4" in done.stdout

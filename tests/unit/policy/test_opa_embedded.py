"""OpaEmbeddedEngine (OPA's Go engine in process): plans, failures, load errors, threads, config.

These run the real engine from ``opa-golib-python-bindings``; without it they skip with how to
install it, and fail in CI.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker.policy.bundle import load_bundle
from broker.policy.contract import Action, PolicyError, PolicyInput, PolicyLoadError
from broker.policy.engine import PolicyEngine
from broker.policy.opa_embedded import (
    Opa,
    OpaEmbeddedEngine,
    build_opa,
    close_retired,
    opa_error_text,
)
from broker.policy.store import PolicyStore
from tests.unit.policy.conftest import SHIPPED_BUNDLE, TINY_POLICY, make_input

WriteBundle = Callable[[dict[str, str]], Path]

pytestmark = pytest.mark.usefixtures("opa_bindings_present")


@pytest.fixture(scope="module")
def shipped() -> Iterator[OpaEmbeddedEngine]:
    engine = OpaEmbeddedEngine(load_bundle(SHIPPED_BUNDLE))
    yield engine
    engine.close()


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


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("decision := 1 / count([])", "evaluation error at p.rego:5: eval_builtin_error"),
        (
            'decision := {"allow": true} if input.direction\ndecision := {"allow": false}',
            "eval_conflict_error",
        ),
    ],
)
def test_evaluation_errors_name_opa_error_and_place(
    write_bundle: WriteBundle, body: str, fragment: str
) -> None:
    """Beyond the denial both engines give (test_engines.py): OPA's error code and location."""
    root = write_bundle({"p.rego": f"package broker\n\nimport rego.v1\n\n{body}\n"})
    engine = OpaEmbeddedEngine(load_bundle(root))
    with pytest.raises(PolicyError) as info:
        engine.decide(make_input())
    engine.close()
    assert fragment in info.value.reason


def test_syntax_error_is_opa_parse_error(write_bundle: WriteBundle) -> None:
    """Beyond file and line (test_engines.py): the reason is OPA's own error code."""
    root = write_bundle({"broker/p.rego": "package broker\n\nallow if {\n  input.x ==\n}\n"})
    with pytest.raises(PolicyLoadError) as info:
        OpaEmbeddedEngine(load_bundle(root))
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


def _pooled(engine: OpaEmbeddedEngine) -> list[Opa]:
    """The engines idle in the pool (taken out and put back)."""
    found: list[Opa] = []
    while not engine._idle.empty():
        found.append(engine._idle.get_nowait())
    for opa in found:
        engine._idle.put(opa)
    return found


def _is_open(opa: Opa) -> bool:
    return opa._engine._handle is not None


def test_a_dropped_engine_is_closed_by_the_next_decision_not_by_the_collector(
    write_bundle: WriteBundle,
) -> None:
    """OpaDestroy never runs on whichever thread the garbage collector happens to run on."""
    root = write_bundle(
        {"broker/policy.rego": TINY_POLICY, "broker/data.json": '{"action": "hash"}'}
    )
    close_retired()
    dropped = OpaEmbeddedEngine(load_bundle(root))
    dropped.decide(make_input())
    pooled = _pooled(dropped)
    assert pooled and all(_is_open(opa) for opa in pooled)

    closing_threads: list[str] = []
    real_close = Opa.close

    def recording_close(self: Opa) -> None:
        closing_threads.append(threading.current_thread().name)
        real_close(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Opa, "close", recording_close)
        collector = threading.Thread(target=gc.collect, name="collector")
        del dropped
        collector.start()
        collector.join()
        assert closing_threads == []  # retired, not closed, by the drop and the collection
        assert all(_is_open(opa) for opa in pooled)

        survivor = OpaEmbeddedEngine(load_bundle(root))
        assert survivor.decide(make_input()).allow
        assert not any(_is_open(opa) for opa in pooled)
        assert set(closing_threads) == {threading.current_thread().name}
        survivor.close()


def test_a_closed_engine_denies_and_closes_a_lent_engine_after_its_decision(
    write_bundle: WriteBundle,
) -> None:
    root = write_bundle(
        {"broker/policy.rego": TINY_POLICY, "broker/data.json": '{"action": "hash"}'}
    )
    engine = OpaEmbeddedEngine(load_bundle(root))
    with engine._lease() as lent:
        engine.close()
        assert _is_open(lent)  # the decision in progress keeps its engine
        value, _ = lent.document("broker.decision", make_input().to_json_obj())
        assert isinstance(value, dict)
    close_retired()
    assert not _is_open(lent)
    with pytest.raises(PolicyError, match="closed"):
        engine.decide(make_input())


def test_an_engine_that_fails_to_build_is_closed(
    write_bundle: WriteBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_bundle({"broker/p.rego": "package broker\n\nallow if {\n  input.x ==\n}\n"})
    close_retired()  # earlier tests' retired engines are not this build's
    closed: list[Opa] = []
    real_close = Opa.close

    def recording_close(self: Opa) -> None:
        closed.append(self)
        real_close(self)

    monkeypatch.setattr(Opa, "close", recording_close)
    with pytest.raises(PolicyLoadError):
        build_opa(load_bundle(root))
    assert len(closed) == 1 and not _is_open(closed[0])

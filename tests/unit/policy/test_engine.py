"""RegorusEngine on the shipped bundle and on tiny bundles: plans, failures, threads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from broker.policy import engine as engine_module
from broker.policy.bundle import load_bundle
from broker.policy.contract import Action, PolicyInput
from broker.policy.engine import PolicyEngine, RegorusEngine, regorus_error_text
from tests.unit.policy.conftest import SHIPPED_BUNDLE, TINY_POLICY, make_input

WriteBundle = Callable[[dict[str, str]], Path]


@pytest.fixture(scope="module")
def shipped() -> RegorusEngine:
    return RegorusEngine(load_bundle(SHIPPED_BUNDLE))


def test_is_a_policy_engine(shipped: RegorusEngine) -> None:
    assert isinstance(shipped, PolicyEngine)
    assert shipped.revision.startswith("sha256:")


def test_realistic_request_to_remote_model(shipped: RegorusEngine, call: PolicyInput) -> None:
    plan = shipped.decide(call)
    assert plan.allow, plan.reasons
    f = plan.fields
    assert len(f) == 20
    assert f["/customer/email"] == Action("tokenize")
    assert f["/customer/national_id"] == Action("tokenize")
    assert f["/payment/card"] == Action("mask", keep_last=4, char="*")
    assert f["/payment/iban"] == Action("tokenize")
    assert f["/session/ip"] == Action("hash")
    for secret in ("/session/token", "/integration/aws_key", "/integration/deploy_key"):
        assert f[secret] == Action("redact")
    assert f["/ticket/body"] == Action("encrypt")
    assert f["/ticket/medical_notes"] == Action("sandbox")
    assert f["/ticket/subject"] == Action("allow")
    assert plan.entities == {"pii.email": Action("tokenize"), "secret.jwt": Action("redact")}
    assert plan.default_action == Action("redact")


def test_realistic_request_to_sandbox(shipped: RegorusEngine) -> None:
    plan = shipped.decide(make_input(runtime="sandbox"))
    assert plan.fields["/customer/email"] == Action("allow")
    assert plan.fields["/session/token"] == Action("redact")
    assert plan.fields["/ticket/medical_notes"] == Action("sandbox")


def test_marketing_with_national_ids_is_denied(shipped: RegorusEngine) -> None:
    plan = shipped.decide(make_input(purpose="marketing"))
    assert not plan.allow
    assert "label pii.national_id.cn may not be used for purpose marketing" in plan.reasons


def test_tenant_overrides(shipped: RegorusEngine) -> None:
    acme = shipped.decide(make_input(tenant="acme"))
    assert (acme.retention.request_ttl_s, acme.retention.response_ttl_s) == (604800, 2592000)
    globex = shipped.decide(make_input(tenant="globex", vendor="shadyai"))
    assert globex.reasons == ("tenant globex does not allow vendor shadyai",)
    assert globex.fields["/ticket/medical_notes"] == Action("drop")


def test_response_masks_pii_the_buyer_did_not_send(shipped: RegorusEngine) -> None:
    answer = make_input(
        direction="response",
        fields=(("/summary", "string", ("pii.phone",)), ("/echo", "string", ("pii.email",))),
        entities=(("secret.cloud_key", ("/summary",)),),
        request_labels=("pii.email",),
    )
    plan = shipped.decide(answer)
    assert plan.fields["/summary"] == Action("mask", keep_last=2, char="*")
    assert plan.fields["/echo"] == Action("allow")
    assert plan.entities["secret.cloud_key"] == Action("redact")


def test_error_text_without_location() -> None:
    assert regorus_error_text(RuntimeError("boom\n\nStack backtrace:\n 0: x")) == (
        "boom",
        None,
        None,
    )


def test_threads_get_their_own_engines(shipped: RegorusEngine) -> None:
    """Concurrent decisions on several threads agree, and no engine crosses a thread."""
    expected = shipped.decide(make_input())
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                assert shipped.decide(make_input()) == expected
        except BaseException as exc:  # noqa: BLE001 - asserted on the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_retired_engines_are_dropped_on_their_own_thread(write_bundle: WriteBundle) -> None:
    """A reload retires an engine; the thread that built it drops it on its next decision."""
    root = write_bundle(
        {"broker/policy.rego": TINY_POLICY, "broker/data.json": '{"action": "hash"}'}
    )
    old = RegorusEngine(load_bundle(root))
    old.decide(make_input())
    old_generation = old._generation
    assert old_generation in engine_module._thread_engines()
    del old
    new = RegorusEngine(load_bundle(root))
    assert new.decide(make_input()).allow
    assert old_generation not in engine_module._thread_engines()

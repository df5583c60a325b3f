"""The Policies service and hot reload, as a security team and an operator use them."""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import orjson
import pytest

from broker._proto.broker.v1 import policies_pb2, policies_pb2_grpc
from tests.integration.harness import BrokerHarness, start_broker
from tests.integration.test_serve_process import ServeProcess

REPO = Path(__file__).resolve().parents[2]
INPUT = REPO / "examples" / "policy" / "call.json"


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(REPO / "policies", target)
    return target


@pytest.fixture(params=["regorus", "opa-embedded"])
def broker(request: pytest.FixtureRequest, tmp_path: Path, bundle: Path) -> Iterator[BrokerHarness]:
    """A broker on each embedded engine (OPA's needs its bindings: skipped without, not in CI)."""
    if request.param == "opa-embedded":
        request.getfixturevalue("opa_bindings_present")
    harness = start_broker(
        tmp_path / "var",
        f"sqlite:///{tmp_path / 'b.db'}",
        BROKER__POLICY__BUNDLE_DIR=str(bundle),
        BROKER__POLICY__WATCH_INTERVAL_SECONDS="0",
        BROKER__POLICY__ENGINE=request.param,
    )
    yield harness
    harness.stop()


def _stub(harness: BrokerHarness) -> tuple[policies_pb2_grpc.PoliciesStub, grpc.Channel]:
    channel = harness.channel()
    return policies_pb2_grpc.PoliciesStub(channel), channel


def _auth(harness: BrokerHarness, role: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {harness.token('acme', role)}"),)


def test_policy_admin_reads_evaluates_and_reloads(broker: BrokerHarness, bundle: Path) -> None:
    stub, channel = _stub(broker)
    with channel:
        admin = _auth(broker, "policy-admin")
        active = stub.GetActivePolicy(policies_pb2.GetActivePolicyRequest(), metadata=admin)
        assert active.revision.startswith("sha256:")
        assert active.engine in {"regorus", "opa-embedded"}
        assert active.engine == broker.config.policy.engine

        plan = orjson.loads(
            stub.EvaluatePolicy(
                policies_pb2.EvaluatePolicyRequest(input_json=INPUT.read_bytes()), metadata=admin
            ).plan_json
        )
        assert plan["fields"]["/customer/card"]["action"] == "mask"
        assert plan["revision"] == active.revision

        (bundle / "broker" / "decision.rego").write_text(
            (bundle / "broker" / "decision.rego").read_text() + "\n# a new revision\n"
        )
        reloaded = stub.ReloadPolicy(policies_pb2.ReloadPolicyRequest(), metadata=admin)
        assert reloaded.status == "loaded"
        assert reloaded.revision != active.revision

        (bundle / "broker" / "decision.rego").write_text("package broker\n\nthis is not rego {\n")
        failed = stub.ReloadPolicy(policies_pb2.ReloadPolicyRequest(), metadata=admin)
        assert failed.status == "failed"
        assert "decision.rego" in failed.error
        assert failed.revision == reloaded.revision
        still = stub.GetActivePolicy(policies_pb2.GetActivePolicyRequest(), metadata=admin)
        assert still.revision == reloaded.revision


def test_other_roles_and_bad_inputs(broker: BrokerHarness) -> None:
    stub, channel = _stub(broker)
    with channel:
        with pytest.raises(grpc.RpcError) as exc:
            stub.GetActivePolicy(
                policies_pb2.GetActivePolicyRequest(), metadata=_auth(broker, "buyer")
            )
        assert exc.value.code() is grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        for bad in (b"{", b'{"direction": "sideways"}', b"[]"):
            with pytest.raises(grpc.RpcError) as exc:
                stub.EvaluatePolicy(
                    policies_pb2.EvaluatePolicyRequest(input_json=bad),
                    metadata=_auth(broker, "policy-admin"),
                )
            assert exc.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_sighup_reloads_a_running_broker(tmp_path: Path, bundle: Path) -> None:
    node = ServeProcess(
        tmp_path / "var",
        f"sqlite:///{tmp_path / 'b.db'}",
        {
            "BROKER__POLICY__BUNDLE_DIR": str(bundle),
            "BROKER__POLICY__WATCH_INTERVAL_SECONDS": "0",
            "BROKER__SERVER__WORKERS": "2",  # SIGHUP to the node reaches every worker
        },
    )
    try:
        started = time.monotonic() + 60
        while not any(e["event"] == "node_started" for e in node.events()):
            assert time.monotonic() < started, "the node did not start both workers"
            time.sleep(0.05)
        first = next(e["revision"] for e in node.events() if e["event"] == "policy_loaded")
        (bundle / "broker" / "data.json").write_text(
            (bundle / "broker" / "data.json").read_text().replace("604800", "86400")
        )
        node.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            reloads = {
                e["worker"]: e
                for e in node.events()
                if e["event"] == "policy.reloaded" and e["previous"] == first
            }
            if len(reloads) == 2:
                break
            time.sleep(0.05)
        assert sorted(reloads) == [0, 1]
        assert {e["revision"] for e in reloads.values()} - {first} == {reloads[0]["revision"]}
    finally:
        assert node.terminate() == 0

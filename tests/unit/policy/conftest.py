"""Fixtures for the policy tests: the shipped bundle, a realistic call, tiny bundles on disk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from broker.policy.contract import (
    EntityInfo,
    FieldInfo,
    ModelInfo,
    PolicyInput,
    PrincipalInfo,
)

SHIPPED_BUNDLE = Path(__file__).resolve().parents[3] / "policies"

#: Lines recorded by test_opa_differential (engines, input counts), printed after the run.
DIFFERENTIAL_SUMMARY = pytest.StashKey[list[str]]()

# A customer-support call as the classifier would describe it: 20 leaves, their labels.
REALISTIC_FIELDS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("/customer/name", "string", ("pii.name",)),
    ("/customer/email", "string", ("pii.email",)),
    ("/customer/phone", "string", ("pii.phone",)),
    ("/customer/national_id", "string", ("pii.national_id.cn",)),
    ("/customer/ssn", "string", ("pii.national_id.us_ssn",)),
    ("/customer/tier", "string", ()),
    ("/payment/card", "string", ("pci.card",)),
    ("/payment/iban", "string", ("finance.iban",)),
    ("/payment/amount", "number", ()),
    ("/session/ip", "string", ("net.ip",)),
    ("/session/token", "string", ("secret.jwt",)),
    ("/integration/aws_key", "string", ("secret.cloud_key",)),
    ("/integration/deploy_key", "string", ("secret.private_key",)),
    ("/ticket/subject", "string", ()),
    ("/ticket/body", "string", ("confidential",)),
    ("/ticket/medical_notes", "string", ("restricted", "pii.name")),
    ("/ticket/priority", "number", ()),
    ("/ticket/tags~1labels/0", "string", ()),
    ("/ticket/created", "string", ()),
    ("/ticket/open", "boolean", ()),
)


def make_input(
    *,
    direction: str = "request",
    tenant: str = "initech",
    runtime: str = "remote-oip",
    vendor: str = "openmodels",
    purpose: str = "support",
    fields: tuple[tuple[str, str, tuple[str, ...]], ...] = REALISTIC_FIELDS,
    entities: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("pii.email", ("/ticket/body",)),
        ("secret.jwt", ("/ticket/body",)),
    ),
    request_labels: tuple[str, ...] = (),
) -> PolicyInput:
    """A policy input; defaults describe the realistic 20-field support call."""
    return PolicyInput(
        direction=direction,  # type: ignore[arg-type]
        principal=PrincipalInfo(tenant, "svc-crm", ("buyer",), {"department": "support"}),
        model=ModelInfo("summarizer", vendor, "1.2.0", runtime, {"region": "eu"}),
        purpose=purpose,
        fields=tuple(FieldInfo(p, t, labels) for p, t, labels in fields),
        entities=tuple(EntityInfo(label, paths) for label, paths in entities),
        request_labels=request_labels,
    )


@pytest.fixture
def call() -> PolicyInput:
    """The realistic 20-field request."""
    return make_input()


@pytest.fixture
def write_bundle(tmp_path: Path) -> Callable[[dict[str, str]], Path]:
    """Write {relative path: text} as a bundle directory and return its root."""

    def write(files: dict[str, str]) -> Path:
        root = tmp_path / "bundle"
        for rel, text in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return root

    return write


TINY_POLICY = """package broker

import rego.v1

decision := {
    "allow": true,
    "reasons": [],
    "fields": {f.path: {"action": data.broker.action} | some f in input.fields},
    "entities": {},
}
"""


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """Print what the regorus-vs-OPA differential test compared, if it ran (no ``-s`` needed)."""
    rows = config.stash.get(DIFFERENTIAL_SUMMARY, None)
    if rows:
        terminalreporter.section("policy engines: regorus vs OPA differential")
        for row in rows:
            terminalreporter.write_line(row)

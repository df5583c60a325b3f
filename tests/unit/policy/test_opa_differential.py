"""Differential test: regorus and OPA's own Go engine must make identical plans.

A seeded generator writes policy inputs per the contract (both directions; principals with
tenants, roles and claims; models and runtimes; purposes; fields with labels and types;
entities; edge cases: no fields, unknown and malformed labels, duplicate labels, many fields,
unicode and JSON-Pointer-escaped paths). Each input is decided by :class:`RegorusEngine` and by
:class:`OpaEmbeddedEngine` over the same bundle, and the outcomes must be equal: the same
checked :class:`Plan`, or the same denial (contract errors verbatim; evaluation errors and
undefined rules by kind, since the two engines word their errors differently).

Bundles: the shipped ``policies/`` and the small policies the other tests write (the plan-cache
tiny policy, the answer-actions policy of the integration tests, the streaming test's policy,
and the failing bodies of ``test_engine.py``), and one written here for numbers (whole floats).
The input count and both engines' versions are printed at the end of the run
(``pytest_terminal_summary`` in this folder's conftest).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson
import pytest

from broker.policy.bundle import Bundle, load_bundle
from broker.policy.contract import (
    EntityInfo,
    FieldInfo,
    ModelInfo,
    PolicyError,
    PolicyInput,
    PrincipalInfo,
)
from broker.policy.engine import PolicyEngine, RegorusEngine
from broker.policy.opa_embedded import OpaEmbeddedEngine, versions
from tests.integration.test_response_actions import BUNDLE as ANSWER_ACTIONS_POLICY
from tests.sandbox.test_stream_broker import POLICY as STREAMING_POLICY
from tests.unit.policy.conftest import DIFFERENTIAL_SUMMARY, SHIPPED_BUNDLE, TINY_POLICY

WriteBundle = Callable[[dict[str, str]], Path]

pytestmark = pytest.mark.usefixtures("opa_bindings_present")

SEED = 14
SHIPPED_INPUTS = 4000
SMALL_POLICY_INPUTS = 500

# Labels: the vocabulary of policies/README.md, families, near misses and malformed ones.
KNOWN_LABELS = (
    "secret.private_key", "secret.jwt", "secret.cloud_key", "secret.api_token", "pci.card",
    "pii.email", "pii.phone", "pii.name", "pii.national_id.cn", "pii.national_id.us_ssn",
    "finance.iban", "net.ip", "confidential", "restricted", "scan.truncated",
)  # fmt: skip
ODD_LABELS = (
    "pii", "secret", "pci", "pci.card.amex", "pii.passport", "finance", "net", "net.ipv6",
    "piix.email", "secretive", "vendor.internal_id", "other", "", ".", "pii.", ".pii", "pii..x",
    "PII.EMAIL", "pii.名前", "секрет.ключ", "🔑.secret", "a" * 300, "restricted.extra",
    "confidential.tier1", "scan", "pci.card.", "pii.national_id",
)  # fmt: skip
TENANTS = ("acme", "globex", "initech", "", "tenants", "défaut", "globex ", "ACME", "t" * 200)
VENDORS = ("openmodels", "shadyai", "acme-models", "", "ShadyAI", "供应商")
RUNTIMES = ("sandbox", "open_inference_grpc", "openai_http", "remote-oip", "", "Sandbox")
PURPOSES = ("support", "analytics", "marketing", "training", "default", "", "Marketing", "营销")
TYPES = ("string", "number", "boolean", "null", "array", "object", "integer")
PATH_PARTS = (
    "customer", "email", "notes", "0", "12", "a~1b", "m~0n", "ticket", "名前", "ключ", "😀",
    "with space", "", "x", "items", "-", "\u00e9", "e\u0301", "\\", '"q"', "%20",
)  # fmt: skip


def _label(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.7:
        return rng.choice(KNOWN_LABELS)
    if roll < 0.95:
        return rng.choice(ODD_LABELS)
    return ".".join(
        rng.choice(("pii", "secret", "x", "pci", "card", "net", "ip")) for _ in range(3)
    )


def _labels(rng: random.Random) -> tuple[str, ...]:
    count = rng.choices((0, 1, 2, 3, 5), weights=(30, 40, 15, 10, 5))[0]
    labels = [_label(rng) for _ in range(count)]
    if labels and rng.random() < 0.05:
        labels.append(labels[0])  # duplicates reach the policy as they are
    return tuple(labels)


def _path(rng: random.Random) -> str:
    depth = rng.randint(0, 4)
    return "".join("/" + rng.choice(PATH_PARTS) for _ in range(depth))


def _claims(rng: random.Random) -> dict[str, Any]:
    pool: dict[str, Any] = {
        "department": rng.choice(("support", "sales", "")),
        "level": rng.randint(-3, 10**12),
        "ratio": rng.choice((0.5, 1e-9, 3.0, -0.0)),
        "admin": rng.random() < 0.5,
        "groups": [rng.choice(("a", "b", "ü")) for _ in range(rng.randint(0, 3))],
        "nested": {"k": [1, {"v": None}], "s": "x"},
        "none": None,
    }
    return {k: pool[k] for k in rng.sample(sorted(pool), rng.randint(0, len(pool)))}


def generate_input(rng: random.Random) -> PolicyInput:
    """One random, contract-valid policy input."""
    direction = "request" if rng.random() < 0.6 else "response"
    size = rng.choices((0, 1, 3, 8, 20, 60, 200), weights=(8, 20, 25, 25, 15, 6, 1))[0]
    paths: list[str] = []
    for _ in range(size):
        path = _path(rng)
        if path not in paths:
            paths.append(path)
    fields = tuple(FieldInfo(p, rng.choice(TYPES), _labels(rng)) for p in paths)
    entity_labels = list(dict.fromkeys(_label(rng) for _ in range(rng.choice((0, 0, 1, 2, 4)))))
    candidates = [*paths, "/elsewhere"]
    entities = tuple(
        EntityInfo(label, tuple(rng.sample(candidates, rng.randint(0, min(3, len(candidates))))))
        for label in entity_labels
    )
    # Detected labels also sit on their fields, as the classifier reports them.
    if entities and fields and rng.random() < 0.7:
        by_path = {f.path: list(f.labels) for f in fields}
        for e in entities:
            for p in e.paths:
                if p in by_path and e.label not in by_path[p]:
                    by_path[p].append(e.label)
        fields = tuple(FieldInfo(f.path, f.type, tuple(by_path[f.path])) for f in fields)
    return PolicyInput(
        direction=direction,
        principal=PrincipalInfo(
            tenant=rng.choice(TENANTS),
            subject=rng.choice(("svc-crm", "user@example.com", "", "ß")),
            roles=tuple(
                rng.sample(("buyer", "admin", "policy-admin", "vendor"), rng.randint(0, 3))
            ),
            claims=_claims(rng),
        ),
        model=ModelInfo(
            id=rng.choice(("summarizer", "iris", "")),
            vendor=rng.choice(VENDORS),
            version=rng.choice(("1.2.0", "0.0.1", "")),
            runtime=rng.choice(RUNTIMES),
            attributes=rng.choice(({}, {"region": "eu"}, {"gpu": True, "n": 2})),
        ),
        purpose=rng.choice(PURPOSES),
        fields=fields,
        entities=entities,
        request_labels=(
            tuple(_label(rng) for _ in range(rng.randint(0, 4))) if direction == "response" else ()
        ),
    )


def outcome(engine: PolicyEngine, policy_input: PolicyInput) -> tuple[str, str]:
    """A comparable outcome: the plan's JSON, or the denial's reason (evaluation errors and
    undefined rules by kind only: the engines word them differently)."""
    try:
        plan = engine.decide(policy_input)
    except PolicyError as exc:
        reason = exc.reason
        if reason.startswith("evaluation error"):
            reason = "evaluation error"
        elif reason.endswith("is undefined for this input"):
            reason = "undefined"
        return "denied", reason
    return "plan", orjson.dumps(plan.to_json_obj()).decode()


def compare(
    bundle: Bundle, inputs: list[PolicyInput], rule: str
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Every input on which the two engines disagree (with both outcomes), and how many inputs
    each engine allowed, denied by plan, or denied by failing (by reason)."""
    regorus_engine = RegorusEngine(bundle, rule=rule)
    opa_engine = OpaEmbeddedEngine(bundle, rule=rule, max_engines=1)
    differences = []
    kinds: dict[str, int] = {}
    for item in inputs:
        left, right = outcome(regorus_engine, item), outcome(opa_engine, item)
        if left != right:
            differences.append({"input": item.to_json_obj(), "regorus": left, "opa": right})
        if left[0] == "plan":
            key = "allow" if orjson.loads(left[1])["allow"] else "deny"
        else:
            key = f"failed: {left[1][:40]}"
        kinds[key] = kinds.get(key, 0) + 1
    opa_engine.close()
    return differences, kinds


def _corpus(count: int, seed: int) -> list[PolicyInput]:
    rng = random.Random(seed)
    return [generate_input(rng) for _ in range(count)]


def _record(request: pytest.FixtureRequest, name: str, count: int, kinds: dict[str, int]) -> None:
    rows = request.config.stash.setdefault(DIFFERENTIAL_SUMMARY, [])
    rows.append(f"{name}: {count} inputs, identical outcomes ({kinds})")


def _assert_same(differences: list[dict[str, Any]], count: int) -> None:
    assert not differences, (
        f"{len(differences)} of {count} inputs decided differently; first: "
        + orjson.dumps(differences[0]).decode()[:4000]
    )


def test_shipped_bundle_regorus_and_opa_agree(request: pytest.FixtureRequest) -> None:
    bundle = load_bundle(SHIPPED_BUNDLE)
    inputs = _corpus(SHIPPED_INPUTS, SEED)
    started = time.perf_counter()
    differences, kinds = compare(bundle, inputs, "data.broker.decision")
    elapsed = time.perf_counter() - started
    _assert_same(differences, len(inputs))
    assert kinds.get("allow", 0) > 1000 and kinds.get("deny", 0) > 200, kinds  # both paths
    _record(request, f"shipped policies/ ({elapsed:.1f} s)", len(inputs), kinds)
    engines = versions()
    request.config.stash[DIFFERENTIAL_SUMMARY].insert(
        0,
        f"regorus {version('gordon-to-regorus')} vs OPA {engines['opa']} "
        f"(opa-golib-python-bindings {engines['bindings']}), seed {SEED}",
    )


# Written for this test: the numbers in a plan as a policy author may write them. OPA keeps
# 4.0, 1e3 and a data.json 5.0 floats where regorus makes them integers; before parse_plan took
# whole floats as integers, OPA's plans for this policy were denials and regorus's were not.
NUMBERS_POLICY = """package broker

import rego.v1

decision := {
	"allow": true,
	"fields": {f.path: _mask(f) | some f in input.fields},
	"entities": {e.label: {"action": "mask", "keep_last": 1e0} | some e in input.entities},
	"retention": {"request_ttl_s": data.broker.ttl, "response_ttl_s": 7 * 86400.0},
}

_mask(f) := {"action": "mask", "keep_last": 4.0} if count(f.labels) > 0

_mask(f) := {"action": "mask", "keep_last": max([1, 2.0]), "char": "#"} if count(f.labels) == 0
"""

SMALL_POLICIES: dict[str, dict[str, str]] = {
    "numbers (this test)": {
        "broker/decision.rego": NUMBERS_POLICY,
        "broker/data.json": '{"ttl": 604800.0}',
    },
    "tiny (conftest)": {
        "broker/policy.rego": TINY_POLICY,
        "broker/data.json": '{"action": "hash"}',
    },
    "answer actions (integration)": {"broker/decision.rego": ANSWER_ACTIONS_POLICY},
    "streaming (sandbox)": {"broker/decision.rego": STREAMING_POLICY},
}


@pytest.mark.parametrize("name", sorted(SMALL_POLICIES))
def test_test_policies_regorus_and_opa_agree(
    request: pytest.FixtureRequest, write_bundle: WriteBundle, name: str
) -> None:
    bundle = load_bundle(write_bundle(SMALL_POLICIES[name]))
    inputs = _corpus(SMALL_POLICY_INPUTS, SEED + 1)
    differences, kinds = compare(bundle, inputs, "data.broker.decision")
    _assert_same(differences, len(inputs))
    _record(request, name, len(inputs), kinds)


# The failing bodies of test_engine.py: both engines must deny, for the same contract reason.
FAILING_BODIES = (
    "decision := 42",
    'decision := {"allow": true, "fields": {"/nope": {"action": "allow"}}}',
    'decision := {"allow": true, "fields": {"/customer/name": "x"}}',
    "decision := x if { x := {}; input.nothing }",
    "decision := 1 / count([])",
    'decision := {"allow": true, "n": to_number("x")}',
)


@pytest.mark.parametrize("body", FAILING_BODIES)
def test_failing_policies_deny_alike(
    request: pytest.FixtureRequest, write_bundle: WriteBundle, body: str
) -> None:
    bundle = load_bundle(write_bundle({"p.rego": f"package broker\n\nimport rego.v1\n\n{body}\n"}))
    inputs = _corpus(50, SEED + 2)
    differences, kinds = compare(bundle, inputs, "data.broker.decision")
    _assert_same(differences, len(inputs))
    assert "allow" not in kinds, kinds
    _record(request, f"failing body {body[:30]!r}", len(inputs), kinds)


def test_generator_is_seeded_and_covers_the_edges() -> None:
    """The corpus is reproducible and holds the edge cases the module docstring promises."""
    first, again = _corpus(300, SEED), _corpus(300, SEED)
    assert [i.to_json_obj() for i in first] == [i.to_json_obj() for i in again]
    corpus = _corpus(SHIPPED_INPUTS, SEED)
    assert any(not i.fields for i in corpus)
    assert any(len(i.fields) >= 100 for i in corpus)
    assert any(i.direction == "response" and i.request_labels for i in corpus)
    assert any(any(not p.isascii() for f in i.fields for p in [f.path]) for i in corpus)
    labels = {label for i in corpus for f in i.fields for label in f.labels}
    assert set(KNOWN_LABELS) <= labels
    assert {"", "pii..x", "PII.EMAIL", "piix.email"} <= labels
    assert any(len(set(f.labels)) < len(f.labels) for i in corpus for f in i.fields)

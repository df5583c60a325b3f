"""Ask the policy about one direction of one call: build its value-free input, get a plan.

The input holds paths, types and labels, never a value, so the plan can be cached by it. Only
the token claims the operator lists in ``[policy] claims`` are passed on: every claim is part
of the cache key, and per-token claims (``jti``, ``iat``) would defeat the cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from broker.auth.principal import Principal
from broker.calls.payload import JsonObject
from broker.classify.classifier import Classification, classify
from broker.errors import PermissionDenied
from broker.policy import (
    EntityInfo,
    FieldInfo,
    ModelInfo,
    Plan,
    PolicyInput,
    PolicyStore,
    PrincipalInfo,
)
from broker.policy.contract import Direction
from broker.registry.model import ModelVersion


class Decider:
    """Classifies payloads and asks the active policy for plans."""

    def __init__(self, policies: PolicyStore, *, claims: Iterable[str] = ()) -> None:
        self._policies = policies
        self._claims = tuple(claims)

    @property
    def revision(self) -> str:
        """The active policy revision ("" when none is loaded)."""
        return self._policies.revision or ""

    def classify_request(
        self, model: ModelVersion, payload: JsonObject, buyer_labels: Mapping[str, Iterable[str]]
    ) -> Classification:
        """Classify a request with the vendor's schema labels and the buyer's labels."""
        schema = {spec.path: spec.labels for spec in model.fields if spec.labels}
        return classify(payload, schema_labels=schema, buyer_labels=buyer_labels)

    def decide(
        self,
        direction: Direction,
        principal: Principal,
        model: ModelVersion,
        purpose: str,
        classification: Classification,
        *,
        request_labels: Iterable[str] = (),
    ) -> Plan:
        """The plan for one direction; PolicyError (PERMISSION_DENIED) if none can be made."""
        claims: dict[str, Any] = {
            name: principal.claims[name] for name in self._claims if name in principal.claims
        }
        policy_input = PolicyInput(
            direction=direction,
            principal=PrincipalInfo(
                tenant=principal.tenant,
                subject=principal.subject,
                roles=tuple(sorted(role.value for role in principal.roles)),
                claims=claims,
            ),
            model=ModelInfo(
                id=model.ref,
                vendor=model.vendor,
                version=model.version,
                runtime=model.runtime.value,
            ),
            purpose=purpose,
            fields=_field_infos(classification),
            entities=tuple(
                EntityInfo(label=label, paths=tuple(paths))
                for label, paths in sorted(classification.entities.items())
            ),
            request_labels=tuple(sorted(set(request_labels))) if direction == "response" else (),
        )
        return self._policies.decide(policy_input)


_FieldShape = tuple[tuple[str, str, frozenset[str]], ...]
_FIELD_INFOS: dict[_FieldShape, tuple[FieldInfo, ...]] = {}
_CACHED_SHAPES = 256
_CACHED_FIELDS = 256  # fields of one cached shape, at most
_CACHED_CHARS = 32_768  # path characters of one cached shape (a label counts 128), at most


def _field_infos(classification: Classification) -> tuple[FieldInfo, ...]:
    """The policy's view of the classified fields, shared by calls of the same shape.

    A model's payloads keep their shape from call to call, so the same tuple of ``FieldInfo``
    (frozen, as is the tuple) is built once and reused: building it took a fifth of a
    decision that the plan cache then answered. The key is what the tuple is made of (paths,
    types, labels: no value, as in the plan cache key); payloads with many fields are not
    cached, and the cache is emptied when full, so buyers' shapes cannot grow it unbounded.
    """
    shape = tuple([(f.pointer, f.type, f.labels) for f in classification.fields])
    found = _FIELD_INFOS.get(shape)
    if found is None:
        found = tuple(
            FieldInfo(path=pointer, type=kind, labels=tuple(sorted(labels)))
            for pointer, kind, labels in shape
        )
        if len(shape) <= _CACHED_FIELDS and _chars(shape) <= _CACHED_CHARS:
            if len(_FIELD_INFOS) >= _CACHED_SHAPES:
                _FIELD_INFOS.clear()
            _FIELD_INFOS[shape] = found
    return found


def _chars(shape: _FieldShape) -> int:
    """What a shape holds in memory, in characters (labels are at most 128 characters)."""
    return sum(len(pointer) + 128 * len(labels) for pointer, _, labels in shape)


def refuse_if_denied(plan: Plan, direction: Direction) -> None:
    """PERMISSION_DENIED with the policy's reasons in the message and the status details."""
    if plan.allow:
        return
    reasons = "; ".join(plan.reasons) or "the policy denies this call"
    where = "the call" if direction == "request" else "the answer"
    raise PermissionDenied(
        f"policy denies {where}: {reasons}",
        details={"revision": plan.revision, "direction": direction}
        | {f"reason_{i}": r for i, r in enumerate(plan.reasons)},
    )


def labels_of(classification: Classification) -> set[str]:
    """Every label of a classified payload."""
    return {label for info in classification.fields for label in info.labels}

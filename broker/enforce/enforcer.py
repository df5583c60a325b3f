"""Apply a plan to a payload: every field and every entity span gets exactly its action.

Semantics, in one place:

- The **field action** applies to the whole leaf value. ``allow`` leaves it alone;
  ``redact`` puts a marker naming its labels; ``mask`` hides all but the last characters;
  ``hash`` puts a keyed pseudonym; ``tokenize`` puts a vault token (restored in the answer);
  ``encrypt`` puts an AES-GCM ciphertext under the tenant's key; ``drop`` removes the field;
  ``sandbox`` lets it through only to a model running in the broker's sandbox.
- **Entity actions** apply to the spans detectors found inside a string (or an integer's
  decimal text) whose field action is ``allow``; a stronger field action already covers them.
  A dropped span is cut out of the text.
- ``sandbox`` on the way to a remote model refuses the whole call with FAILED_PRECONDITION:
  the plan has to say ``drop`` to send the rest without it. On the answer path (where the
  recipient is the buyer, not a model) ``sandbox`` is treated as ``redact``: fail closed.
- Nothing here logs or raises with a value: errors name paths and labels only.

The result lists, for each field, what was done (path, labels, action, entity actions), which
is what Invoke reports to the buyer and what the audit log records.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Literal

from broker.classify.classifier import Classification, FieldInfo
from broker.classify.detectors import Span
from broker.classify.paths import parse_pointer
from broker.enforce import transforms
from broker.enforce.keys import TenantKeys
from broker.enforce.vault import PendingToken, new_token
from broker.errors import FailedPrecondition
from broker.policy.contract import Action, Plan

Direction = Literal["request", "response"]


@dataclass(frozen=True, slots=True)
class EntityDecision:
    """What happened to the entities of one label inside one field."""

    label: str
    action: str
    count: int


@dataclass(frozen=True, slots=True)
class FieldDecision:
    """What happened to one field: value-free, safe to return, log and audit."""

    direction: Direction
    path: str
    labels: tuple[str, ...]
    action: str
    entities: tuple[EntityDecision, ...] = ()


@dataclass
class Enforced:
    """The payload as it may leave, what was done, and the tokens to store before it leaves."""

    payload: dict[str, Any]
    decisions: list[FieldDecision]
    pending_tokens: list[PendingToken] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CallScope:
    """Who the call is for and where it goes: the inputs every action needs besides the plan."""

    tenant: str
    call_id: str
    to_sandbox: bool


class Enforcer:
    """Applies plans using the tenant keys for hash and encrypt."""

    def __init__(self, keys: TenantKeys) -> None:
        self._keys = keys

    def apply(
        self,
        payload: dict[str, Any],
        classification: Classification,
        plan: Plan,
        scope: CallScope,
        direction: Direction,
    ) -> Enforced:
        """Return a transformed copy of ``payload``; the original is not modified."""
        run = _Run(self._keys, plan, scope, direction, Enforced(_deep_copy(payload), []))
        drops: list[tuple[str | int, ...]] = []
        for info in classification.fields:
            action = plan.fields.get(info.pointer, plan.default_action)
            kind = run.effective(action.kind, info, None)
            location = parse_pointer(info.pointer)
            entities: tuple[EntityDecision, ...] = ()
            if kind == "drop":
                drops.append(location)
            elif kind == "allow":
                entities = run.apply_entities(location, info)
            elif kind != "sandbox":
                value = _get(run.result.payload, location)
                _set(run.result.payload, location, run.transform(action, kind, value, info))
            if entities or not _shareable(info):
                labels = tuple(sorted(info.labels))
                decision = FieldDecision(direction, info.pointer, labels, kind, entities)
            else:
                decision = _plain_decision(direction, info.pointer, info.labels, kind)
            run.result.decisions.append(decision)
        for location in reversed(drops):
            _delete(run.result.payload, location)
        return run.result


@dataclass
class _Run:
    """The state of one ``Enforcer.apply``: what it needs at every field."""

    keys: TenantKeys
    plan: Plan
    scope: CallScope
    direction: Direction
    result: Enforced

    def effective(self, kind: str, info: FieldInfo, span: Span | None) -> str:
        """The action to carry out; refuses ``sandbox`` on the way to a remote model."""
        if kind != "sandbox":
            return kind
        if self.direction == "response":
            return "redact"
        if not self.scope.to_sandbox:
            what = f"a {span.label} entity in field" if span else "field"
            labels = ", ".join(sorted(info.labels)) or "no labels"
            raise FailedPrecondition(
                f"{what} {info.pointer} ({labels}) may only reach a model in the broker's "
                "sandbox, and this model is remote: call a sandboxed model, or have the policy "
                "drop it",
                details={"path": info.pointer, **({"label": span.label} if span else {})},
            )
        return kind

    def transform(
        self, action: Action, kind: str, value: Any, info: FieldInfo, span: Span | None = None
    ) -> Any:
        """The replacement of ``value`` (a field, or one span of it) under ``kind``."""
        tenant = self.scope.tenant
        if kind == "redact":
            return transforms.redact_marker(frozenset({span.label}) if span else info.labels)
        if kind == "mask":
            keep_last = action.keep_last if action.keep_last is not None else 4
            return transforms.mask(
                transforms.value_text(value), keep_last=keep_last, char=action.char or "*"
            )
        if kind == "hash":
            return transforms.pseudonym(self.keys.key(tenant, "hash"), value)
        if kind == "encrypt":
            key = self.keys.key(tenant, "encrypt")
            return transforms.encrypt_value(key, self.keys.key_id, tenant, value)
        if kind == "tokenize":
            token = new_token()
            self.result.pending_tokens.append(PendingToken(token, value))
            return token
        raise FailedPrecondition(f"unknown action {kind!r} for field {info.pointer}")

    def apply_entities(
        self, location: tuple[str | int, ...], info: FieldInfo
    ) -> tuple[EntityDecision, ...]:
        """Apply the entity actions to the spans inside one allowed field."""
        if not info.spans:
            return ()
        text = transforms.value_text(_get(self.result.payload, location))
        counts: dict[tuple[str, str], int] = {}
        pieces: list[str] = []
        cursor = 0
        for span in sorted(info.spans, key=lambda s: s.start):
            action = self.plan.entities.get(span.label, self.plan.default_action)
            kind = self.effective(action.kind, info, span)
            counts[(span.label, kind)] = counts.get((span.label, kind), 0) + 1
            pieces.append(text[cursor : span.start])
            original = text[span.start : span.end]
            if kind in ("allow", "sandbox"):
                pieces.append(original)
            elif kind != "drop":
                pieces.append(str(self.transform(action, kind, original, info, span)))
            cursor = span.end
        pieces.append(text[cursor:])
        changed = "".join(pieces)
        if changed != text:
            _set(self.result.payload, location, changed)
        return tuple(EntityDecision(lb, kind, n) for (lb, kind), n in sorted(counts.items()))


_SHARED_PATH_CHARS = 256  # pointers longer than this get a FieldDecision of their own
_SHARED_LABELS = 16  # as do fields with more labels than this


def _shareable(info: FieldInfo) -> bool:
    return len(info.pointer) <= _SHARED_PATH_CHARS and len(info.labels) <= _SHARED_LABELS


@functools.lru_cache(maxsize=4096)
def _plain_decision(
    direction: Direction, pointer: str, labels: frozenset[str], kind: str
) -> FieldDecision:
    """The decision of a field without entity actions, one object per (path, labels, action).

    A model's calls repeat the same decisions, and a frozen dataclass costs more to build than
    this lookup; decisions are immutable, so sharing them is safe (the servicer's message cache
    then finds them by identity). Bounded: 4096 entries of short paths and a few labels (at
    most 128 characters each by the label rule), never a value.
    """
    return FieldDecision(direction, pointer, tuple(sorted(labels)), kind)


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _deep_copy(child) for key, child in value.items()}
    if isinstance(value, list):
        return [_deep_copy(child) for child in value]
    return value


def _step(node: Any, token: str | int) -> Any:
    """One pointer step: an index into a list, a key (always text) into an object."""
    return node[int(token)] if isinstance(node, list) else node[str(token)]


def _get(document: Any, location: tuple[str | int, ...]) -> Any:
    node = document
    for token in location:
        node = _step(node, token)
    return node


def _set(document: Any, location: tuple[str | int, ...], value: Any) -> None:
    parent = _get(document, location[:-1])
    parent[int(location[-1]) if isinstance(parent, list) else str(location[-1])] = value


def _delete(document: Any, location: tuple[str | int, ...]) -> None:
    if not location:
        document.clear()
        return
    parent = _get(document, location[:-1])
    del parent[int(location[-1]) if isinstance(parent, list) else str(location[-1])]

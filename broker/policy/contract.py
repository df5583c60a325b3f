"""The policy contract: what the broker asks a policy, and the plan it accepts back.

The policy is written by someone else and may be wrong, so its answer is parsed strictly:
anything that is not exactly the shape below raises :class:`PolicyError`, which is a
:class:`~broker.errors.PermissionDenied`, so a broken policy denies the call (fail closed).

Input (values never enter it, only shapes and labels)::

    {direction, principal{tenant,subject,roles,claims}, model{id,vendor,version,runtime,
     attributes}, purpose, fields:[{path,type,labels}], entities:[{label,paths}],
     request_labels:[...]}          # response direction only: labels the buyer sent

Output::

    {allow: bool, reasons: [str], default_action?: action, fields: {path: action},
     entities: {label: action}, retention?: {request_ttl_s: int, response_ttl_s: int}}

An action is ``{"action": name, ...params}`` (a bare name string is accepted for
``default_action``). Only ``mask`` takes parameters: ``keep_last`` (int >= 0, default 4) and
``char`` (one character, default ``*``). Unknown keys are errors, so a typo such as
``keep_lats`` is never silently ignored. Integers (``keep_last``, TTLs) may be written ``4`` or
``4.0``: JSON does not tell them apart, and OPA keeps ``4.0`` a float where regorus does not.

Defaults: a field or entity the output does not mention gets ``default_action``; a policy that
declares none gets ``redact``. Redact is the fail-closed choice: a policy author who forgets a
field loses that field, the model never sees it. A missing ``retention`` means keep nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from broker.errors import InvalidArgument, PermissionDenied

Direction = Literal["request", "response"]

ACTIONS = frozenset({"allow", "redact", "mask", "hash", "tokenize", "encrypt", "sandbox", "drop"})
DEFAULT_MASK_KEEP_LAST = 4
DEFAULT_MASK_CHAR = "*"
FAIL_CLOSED_ACTION = "redact"


class PolicyError(PermissionDenied):
    """The policy could not produce a usable plan; the call is denied (PERMISSION_DENIED).

    The message names the problem (never a payload value: policies only see shapes).
    """

    PREFIX: ClassVar[str] = "policy decision failed"

    def __init__(self, reason: str, *, log_reason: str | None = None) -> None:
        super().__init__(f"{self.PREFIX}: {reason}", log_reason=log_reason)
        self.reason = reason


class PolicyLoadError(PolicyError):
    """A bundle could not be loaded (syntax error, bad data file); ``file``/``line`` if known.

    It is a PolicyError because a broker without a loadable policy must deny.
    """

    PREFIX: ClassVar[str] = "policy bundle failed to load"

    def __init__(self, reason: str, *, file: str | None = None, line: int | None = None) -> None:
        where = f"{file}:{line}: " if file and line else f"{file}: " if file else ""
        super().__init__(f"{where}{reason}")
        self.file = file
        self.line = line


@dataclass(frozen=True, slots=True)
class PrincipalInfo:
    """The caller as the policy sees it.

    Pass only the claims policies need: every claim is part of the plan cache key.
    """

    tenant: str
    subject: str
    roles: tuple[str, ...] = ()
    claims: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """The resolved model: who made it, which version, where it runs."""

    id: str
    vendor: str
    version: str
    runtime: str
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FieldInfo:
    """One leaf of the payload: its path, JSON type and labels, never its value."""

    path: str
    type: str
    labels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EntityInfo:
    """An entity label found by detectors inside strings, and the paths where it was found."""

    label: str
    paths: tuple[str, ...] = ()


def _object(value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{name} must be an object")
    return value


def _list(value: object, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidArgument(f"{name} must be a list")
    return value


def _text(doc: Mapping[str, Any], name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a string")
    return value


def _texts(value: object, name: str) -> tuple[str, ...]:
    items = _list(value, name)
    if not all(isinstance(item, str) for item in items):
        raise InvalidArgument(f"{name} must be a list of strings")
    return tuple(items)


@dataclass(frozen=True, slots=True)
class PolicyInput:
    """Everything one decision depends on; it is also the plan cache key, so it holds no values."""

    direction: Direction
    principal: PrincipalInfo
    model: ModelInfo
    purpose: str
    fields: tuple[FieldInfo, ...] = ()
    entities: tuple[EntityInfo, ...] = ()
    request_labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.direction not in ("request", "response"):
            raise ValueError("direction must be 'request' or 'response'")
        paths = [f.path for f in self.fields]
        if len(set(paths)) != len(paths):
            raise ValueError("field paths must be unique")
        labels = [e.label for e in self.entities]
        if len(set(labels)) != len(labels):
            raise ValueError("entity labels must be unique (merge their paths)")

    @classmethod
    def from_json_obj(cls, obj: object) -> PolicyInput:
        """Parse an input document (``broker policy eval --input call.json``).

        Raises ``InvalidArgument`` (or ``ValueError`` for duplicate paths) naming the first
        thing that does not match the contract.
        """
        doc = _object(obj, "input")
        principal = _object(doc.get("principal"), "principal")
        model = _object(doc.get("model"), "model")
        fields = tuple(
            FieldInfo(_text(f, "path"), _text(f, "type"), _texts(f.get("labels", []), "labels"))
            for f in (_object(x, "fields[]") for x in _list(doc.get("fields", []), "fields"))
        )
        entities = tuple(
            EntityInfo(_text(e, "label"), _texts(e.get("paths", []), "paths"))
            for e in (_object(x, "entities[]") for x in _list(doc.get("entities", []), "entities"))
        )
        return cls(
            direction=_text(doc, "direction"),  # type: ignore[arg-type]  # checked on init
            principal=PrincipalInfo(
                _text(principal, "tenant"),
                _text(principal, "subject"),
                _texts(principal.get("roles", []), "roles"),
                _object(principal.get("claims", {}), "claims"),
            ),
            model=ModelInfo(
                _text(model, "id"),
                _text(model, "vendor"),
                _text(model, "version"),
                _text(model, "runtime"),
                _object(model.get("attributes", {}), "attributes"),
            ),
            purpose=_text(doc, "purpose"),
            fields=fields,
            entities=entities,
            request_labels=_texts(doc.get("request_labels", []), "request_labels"),
        )

    def to_json_obj(self) -> dict[str, Any]:
        """The JSON document given to the policy as ``input``."""
        obj: dict[str, Any] = {
            "direction": self.direction,
            "principal": {
                "tenant": self.principal.tenant,
                "subject": self.principal.subject,
                "roles": list(self.principal.roles),
                "claims": dict(self.principal.claims),
            },
            "model": {
                "id": self.model.id,
                "vendor": self.model.vendor,
                "version": self.model.version,
                "runtime": self.model.runtime,
                "attributes": dict(self.model.attributes),
            },
            "purpose": self.purpose,
            "fields": [
                {"path": f.path, "type": f.type, "labels": list(f.labels)} for f in self.fields
            ],
            "entities": [{"label": e.label, "paths": list(e.paths)} for e in self.entities],
        }
        if self.direction == "response":
            obj["request_labels"] = list(self.request_labels)
        return obj


@dataclass(frozen=True, slots=True)
class Action:
    """What happens to one field or entity. ``keep_last``/``char`` are set for ``mask`` only."""

    kind: str
    keep_last: int | None = None
    char: str | None = None

    def to_json_obj(self) -> dict[str, Any]:
        """The action in the policy's own output form."""
        obj: dict[str, Any] = {"action": self.kind}
        if self.kind == "mask":
            obj["keep_last"] = self.keep_last
            obj["char"] = self.char
        return obj


@dataclass(frozen=True, slots=True)
class Retention:
    """How long the broker keeps the request and the answer; 0 means not at all."""

    request_ttl_s: int = 0
    response_ttl_s: int = 0


@dataclass(frozen=True, slots=True)
class Plan:
    """A checked decision: every input field and entity has exactly one action.

    ``fields``/``entities`` are complete (defaults already applied) and read-only, so the
    enforcer never has to know about defaults and a cached plan cannot be altered by a user.
    """

    allow: bool
    reasons: tuple[str, ...]
    fields: Mapping[str, Action]
    entities: Mapping[str, Action]
    default_action: Action
    retention: Retention
    revision: str

    def to_json_obj(self) -> dict[str, Any]:
        """The plan as JSON (for ``broker policy eval`` and previews)."""
        return {
            "allow": self.allow,
            "reasons": list(self.reasons),
            "default_action": self.default_action.to_json_obj(),
            "fields": {p: a.to_json_obj() for p, a in self.fields.items()},
            "entities": {lb: a.to_json_obj() for lb, a in self.entities.items()},
            "retention": {
                "request_ttl_s": self.retention.request_ttl_s,
                "response_ttl_s": self.retention.response_ttl_s,
            },
            "revision": self.revision,
        }


def _whole(value: object) -> int | None:
    """``value`` as an int if it is a whole JSON number (``4`` or ``4.0``), else ``None``.

    JSON does not tell 4 from 4.0, and the engines do not agree: regorus turns the Rego literal
    ``4.0`` (or ``1e3``, or a ``5.0`` in data.json) into an integer, OPA keeps it a float. The
    plan must not depend on the engine, so both count as the integer. Booleans never do.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def parse_action(raw: object, where: str) -> Action:
    """Parse one action object (or bare name); ``where`` names it in the error."""
    if isinstance(raw, str):
        raw = {"action": raw}
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where}: an action must be an object")
    kind = raw.get("action")
    if not isinstance(kind, str) or kind not in ACTIONS:
        raise PolicyError(f"{where}: unknown action {str(kind)[:40]!r}")
    extra = set(raw) - {"action"} - ({"keep_last", "char"} if kind == "mask" else set())
    if extra:
        raise PolicyError(f"{where}: unexpected parameters {sorted(map(str, extra))} for {kind}")
    if kind != "mask":
        return Action(kind)
    keep_last = _whole(raw.get("keep_last", DEFAULT_MASK_KEEP_LAST))
    char = raw.get("char", DEFAULT_MASK_CHAR)
    if keep_last is None or keep_last < 0:
        raise PolicyError(f"{where}: mask keep_last must be a non-negative integer")
    if not isinstance(char, str) or len(char) != 1:
        raise PolicyError(f"{where}: mask char must be a single character")
    return Action("mask", keep_last=keep_last, char=char)


def _parse_retention(raw: object) -> Retention:
    if raw is None:
        return Retention()
    if not isinstance(raw, Mapping) or set(raw) - {"request_ttl_s", "response_ttl_s"}:
        raise PolicyError("retention must be {request_ttl_s, response_ttl_s}")
    values: list[int] = []
    for name in ("request_ttl_s", "response_ttl_s"):
        value = _whole(raw.get(name, 0))
        if value is None or value < 0:
            raise PolicyError(f"retention.{name} must be a non-negative integer")
        values.append(value)
    return Retention(values[0], values[1])


def _parse_actions(raw: object, name: str, known: set[str], what: str) -> dict[str, Action]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{name} must be an object")
    parsed: dict[str, Action] = {}
    for key, value in raw.items():
        if key not in known:
            raise PolicyError(f"{name} names {what} {str(key)[:200]!r} that is not in the input")
        parsed[key] = parse_action(value, f"{name}[{key!r}]")
    return parsed


def parse_plan(raw: object, policy_input: PolicyInput, revision: str) -> Plan:
    """Check the policy's output against the contract and complete it with defaults.

    Raises :class:`PolicyError` for a non-object, a non-boolean ``allow``, unknown actions,
    bad parameters, paths or labels not in the input, and negative or non-integer TTLs.
    """
    if not isinstance(raw, Mapping):
        raise PolicyError(f"the decision must be an object, not {type(raw).__name__}")
    unknown = set(raw) - {"allow", "reasons", "default_action", "fields", "entities", "retention"}
    if unknown:
        raise PolicyError(f"unexpected keys in the decision: {sorted(map(str, unknown))[:10]}")
    allow = raw.get("allow")
    if not isinstance(allow, bool):
        raise PolicyError("allow must be true or false")
    reasons_raw = raw.get("reasons", [])
    if not isinstance(reasons_raw, list) or not all(isinstance(r, str) for r in reasons_raw):
        raise PolicyError("reasons must be a list of strings")
    reasons = tuple(reasons_raw)
    if not allow and not reasons:
        reasons = ("the policy denied the call without a reason",)
    default_raw = raw.get("default_action")
    default = (
        Action(FAIL_CLOSED_ACTION)
        if default_raw is None
        else parse_action(default_raw, "default_action")
    )
    paths = {f.path for f in policy_input.fields}
    labels = {e.label for e in policy_input.entities}
    fields = _parse_actions(raw.get("fields"), "fields", paths, "path")
    entities = _parse_actions(raw.get("entities"), "entities", labels, "label")
    complete_fields = {f.path: fields.get(f.path, default) for f in policy_input.fields}
    complete_entities = {e.label: entities.get(e.label, default) for e in policy_input.entities}
    return Plan(
        allow=allow,
        reasons=reasons,
        fields=MappingProxyType(complete_fields),
        entities=MappingProxyType(complete_entities),
        default_action=default,
        retention=_parse_retention(raw.get("retention")),
        revision=revision,
    )

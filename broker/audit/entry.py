"""Audit log entries: a versioned schema, canonical JSON bytes, commitments instead of payloads.

An entry is what the Merkle tree commits to, so its bytes must be reproducible by anyone who
re-encodes the same content: canonical JSON in the style of RFC 8785 (keys sorted by UTF-16 code
units, no whitespace, UTF-8, JSON.stringify string escaping). Only integers, strings, booleans,
null, lists and objects are allowed: no floats (RFC 8785 needs ECMAScript number formatting to
encode them canonically, and integers suffice: times and latencies are in microseconds).

Entries never hold a payload value. What was sent to a model and what came back are committed
to by keyed digests (HMAC-SHA256 under the tenant's audit key, see :mod:`broker.audit.keys`), so
the log can prove *which* bytes travelled without revealing them, and a leaked log does not let
anyone confirm a guessed payload.

Kinds (``"v": 1``)::

    call.intent    before dispatch: who, which model, policy revision, per-field actions,
                   digest of what will be sent
    call.outcome   after the call: status, latency, digest of the answer, error class;
                   linked to its intent by call id and the intent's leaf index (absent for a
                   call refused before dispatch, e.g. a policy deny)
    call.preview   a Preview: who asked about which model, what the policy would do per field
    admin.*        model registered/updated/retired, policy activated, key created/rotated,
                   retained record held/released/erased/deleted (with the key destroyed),
                   sandbox violation, an entry viewed in the compliance console
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from broker.audit.merkle import VerificationError

ENTRY_VERSION: Final = 1
KIND_INTENT: Final = "call.intent"
KIND_OUTCOME: Final = "call.outcome"
KIND_PREVIEW: Final = "call.preview"
ADMIN_KINDS: Final = frozenset(
    {
        "admin.model.registered",
        "admin.model.updated",
        "admin.model.retired",
        "admin.policy.activated",
        "admin.key.created",
        "admin.key.rotated",
        "admin.retention.held",
        "admin.retention.released",
        "admin.retention.erased",
        "admin.retention.deleted",
        "admin.sandbox.violation",
        "admin.audit.viewed",
    }
)
KINDS: Final = frozenset({KIND_INTENT, KIND_OUTCOME, KIND_PREVIEW, *ADMIN_KINDS})
MAX_ENTRY_BYTES: Final = 256 * 1024
_MAX_DEPTH: Final = 16
_MAX_SAFE_INT: Final = (1 << 53) - 1


def _utf16_key(key: str) -> bytes:
    """RFC 8785 section 3.2.3 sorts object keys by their UTF-16 code units."""
    return key.encode("utf-16-be", "surrogatepass")


def _check_value(value: object, depth: int) -> bool:
    """Raise if ``value`` cannot be in an entry; return whether orjson may encode it.

    True means: every container is exactly a ``dict``, ``list`` or ``tuple``, every scalar
    exactly a ``str``, ``int``, ``bool`` or ``None``, and every key is ASCII. For such a value
    orjson's sorted, compact output is byte for byte the canonical one (see ``canonical_json``).
    Anything else (a subclass, another ``Mapping``, a non-ASCII key) is still accepted, and
    encoded by the reference path.
    """
    if depth > _MAX_DEPTH:
        raise ValueError("entry nests too deeply")
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is dict:
        return _check_dict(value, depth)  # type: ignore[arg-type]
    if kind is list or kind is tuple:
        fast = True
        for item in value:  # type: ignore[attr-defined]
            if not _check_value(item, depth + 1):
                fast = False
        return fast
    if kind is int:
        if abs(value) > _MAX_SAFE_INT:  # type: ignore[arg-type]
            raise ValueError("integers in entries must fit in an IEEE double exactly")
        return True
    _check_other(value, depth)
    return False


def _check_dict(value: dict[Any, Any], depth: int) -> bool:
    """``_check_value`` of a ``dict``; its plain string and small integer values inline.

    Every entry is one dict of mostly such values, checked once per append: a call per value
    cost more than the check itself. Inline only where ``_check_value`` of the value would not
    have refused its depth, so the outcome is the same as calling it.
    """
    fast = True
    inline = depth < _MAX_DEPTH
    for key, item in value.items():
        if type(key) is not str:
            if not isinstance(key, str):
                raise TypeError("object keys in entries must be strings")
            fast = False
        elif not key.isascii():
            fast = False
        if inline:
            kind = type(item)
            if kind is str or (kind is int and -_MAX_SAFE_INT <= item <= _MAX_SAFE_INT):
                continue
        if not _check_value(item, depth + 1):
            fast = False
    return fast


def _check_other(value: object, depth: int) -> None:
    """The checks of ``_check_value`` for subclasses and other mappings (never fast)."""
    if isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if abs(value) > _MAX_SAFE_INT:
            raise ValueError("integers in entries must fit in an IEEE double exactly")
        return
    if isinstance(value, float):
        raise TypeError("floats are not allowed in entries; use integers (e.g. microseconds)")
    if isinstance(value, list | tuple):
        for item in value:
            _check_value(item, depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError("object keys in entries must be strings")
            _check_value(item, depth + 1)
        return
    raise TypeError(f"{type(value).__name__} cannot appear in an entry")


def _sorted(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _sorted(value[k]) for k in sorted(value, key=_utf16_key)}
    if isinstance(value, list | tuple):
        return [_sorted(v) for v in value]
    return value


def canonical_json(value: object) -> bytes:
    """Encode ``value`` as canonical JSON bytes; TypeError or ValueError if it cannot be.

    The reference path: Python's ``json`` with ``ensure_ascii=False`` escapes exactly what
    JSON.stringify escapes (quote, backslash, control characters; ``\\u00xx`` in lowercase
    hex), so sorting the keys by UTF-16 code units and dropping whitespace is all that is left
    to do.

    The fast path, taken when ``_check_value`` says so (every entry the call path writes):
    ``orjson`` with ``OPT_SORT_KEYS``, about five times faster. It gives the same bytes because
    (1) orjson sorts keys by their UTF-8 bytes, i.e. by code point, which equals UTF-16 code unit
    order unless one key holds a character above U+FFFF and another one in U+E000..U+FFFF; the
    fast path takes ASCII keys only; (2) orjson escapes every code point exactly as ``json``
    with ``ensure_ascii=False`` does (``tests/unit/audit/test_entry.py`` checks all of them);
    (3) it refuses a lone surrogate, as the reference path does; (4) it writes integers,
    ``true``, ``false`` and ``null`` alike, and the check has already refused floats, integers
    beyond 2**53 and non-string keys.
    """
    if _check_value(value, 0):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError as exc:  # the one thing left to refuse: a lone surrogate
            raise ValueError("entry text is not valid Unicode (lone surrogate)") from exc
    return _reference_json(value)


def _reference_json(value: object) -> bytes:
    """The canonical encoding in plain Python; for values the fast path does not take."""
    text = json.dumps(_sorted(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("entry text is not valid Unicode (lone surrogate)") from exc


@dataclass(frozen=True, slots=True)
class FieldAction:
    """What the policy did to one field: its path, its labels and the action taken.

    A row for the entities of one label found inside a field (action ``entity.<action>``)
    also records ``count``, how many there were: a number, never the values. Rows without a
    count keep the exact bytes entries had before counts were recorded.
    """

    path: str
    labels: tuple[str, ...]
    action: str
    count: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The field's object inside an entry (labels sorted, so the order carries no meaning)."""
        body: dict[str, Any] = {
            "path": self.path,
            "labels": sorted(self.labels),
            "action": self.action,
        }
        if self.count is not None:
            body["count"] = _nonneg(self.count, "count")
        return body


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry: its body (already validated) and the columns stored beside it.

    Build entries with :func:`call_intent`, :func:`call_outcome` or :func:`admin_event`;
    ``data`` is the canonical encoding that goes into the tree.
    """

    body: Mapping[str, Any]
    data: bytes = field(repr=False)

    @property
    def kind(self) -> str:
        """The entry kind, e.g. ``call.intent``."""
        return str(self.body["kind"])

    @property
    def call_id(self) -> str:
        """The call id, or "" for administrative events."""
        return str(self.body.get("call_id", ""))


def _make(body: dict[str, Any]) -> Entry:
    body = {"v": ENTRY_VERSION, **body}
    data = canonical_json(body)
    if len(data) > MAX_ENTRY_BYTES:
        raise ValueError(f"entry is {len(data)} bytes, more than {MAX_ENTRY_BYTES}")
    return Entry(body, data)


def _nonneg(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer")
    return value


def call_intent(
    *,
    time_us: int,
    call_id: str,
    tenant: str,
    subject: str,
    model: str,
    vendor: str,
    policy_revision: str,
    fields: Sequence[FieldAction],
    request_digest: str,
    retention_id: str = "",
) -> Entry:
    """The entry written before anything is sent to the model."""
    return _make(
        {
            "kind": KIND_INTENT,
            "time_us": _nonneg(time_us, "time_us"),
            "call_id": call_id,
            "tenant": tenant,
            "subject": subject,
            "model": model,
            "vendor": vendor,
            "policy_revision": policy_revision,
            "fields": [f.to_json() for f in sorted(fields, key=lambda f: f.path)],
            "request_digest": request_digest,
            "retention_id": retention_id,
        }
    )


def call_outcome(
    *,
    time_us: int,
    call_id: str,
    tenant: str,
    subject: str,
    model: str,
    vendor: str,
    intent_index: int | None,
    status: str,
    latency_us: int,
    response_digest: str,
    error_class: str = "",
    usage: Mapping[str, int] | None = None,
    stream: Mapping[str, int | bool] | None = None,
    retained_record_ids: Sequence[str] = (),
    metering: Mapping[str, int | str] | None = None,
) -> Entry:
    """The entry written before the answer (or the error) reaches the caller.

    ``metering`` (the units the call is billed for, its currency and cost in micros; see
    ``broker.metering``) makes each invoice line provable: the usage record of the call holds
    exactly these values, and this entry's inclusion proof covers them.

    ``usage`` (token counts a model reported), ``stream`` (for a streamed answer: chunks
    delivered and whether the answer was partial) and ``retained_record_ids`` (the records the
    policy had this call kept: what a compliance officer follows to them, and what their
    deletion receipts name) are added only when given, so the bytes of entries without them are
    those of earlier versions.
    """
    extra: dict[str, Any] = {}
    if usage is not None:
        extra["usage"] = {key: _nonneg(value, key) for key, value in usage.items()}
    if stream is not None:
        extra["stream"] = dict(stream)
    if retained_record_ids:
        extra["retained_record_ids"] = list(retained_record_ids)
    if metering is not None:
        extra["metering"] = dict(metering)
    return _make(
        {
            **extra,
            "kind": KIND_OUTCOME,
            "time_us": _nonneg(time_us, "time_us"),
            "call_id": call_id,
            "tenant": tenant,
            "subject": subject,
            "model": model,
            "vendor": vendor,
            "intent_index": None if intent_index is None else _nonneg(intent_index, "index"),
            "status": status,
            "latency_us": _nonneg(latency_us, "latency_us"),
            "response_digest": response_digest,
            "error_class": error_class,
        }
    )


def call_preview(
    *,
    time_us: int,
    call_id: str,
    tenant: str,
    subject: str,
    model: str,
    vendor: str,
    policy_revision: str,
    fields: Sequence[FieldAction],
    allowed: bool,
) -> Entry:
    """A Preview: nothing was sent anywhere; what the policy would have done is recorded."""
    return _make(
        {
            "kind": KIND_PREVIEW,
            "time_us": _nonneg(time_us, "time_us"),
            "call_id": call_id,
            "tenant": tenant,
            "subject": subject,
            "model": model,
            "vendor": vendor,
            "policy_revision": policy_revision,
            "fields": [f.to_json() for f in sorted(fields, key=lambda f: (f.path, f.action))],
            "allowed": allowed,
        }
    )


def admin_event(
    *,
    kind: str,
    time_us: int,
    tenant: str,
    actor: str,
    target: str,
    details: Mapping[str, str] | None = None,
) -> Entry:
    """An administrative event: ``actor`` (a subject) did ``kind`` to ``target``."""
    if kind not in ADMIN_KINDS:
        raise ValueError(f"unknown administrative kind {kind!r}")
    return _make(
        {
            "kind": kind,
            "time_us": _nonneg(time_us, "time_us"),
            "tenant": tenant,
            "subject": actor,
            "target": target,
            "details": dict(details or {}),
        }
    )


def parse_entry(data: bytes) -> dict[str, Any]:
    """Decode untrusted entry bytes; VerificationError unless canonical, versioned and known."""
    if not isinstance(data, bytes) or len(data) > MAX_ENTRY_BYTES:
        raise VerificationError("entry must be at most 256 KiB of bytes")
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise VerificationError("entry is not valid UTF-8 JSON") from exc
    if not isinstance(body, dict):
        raise VerificationError("entry is not a JSON object")
    try:
        canonical = canonical_json(body)
    except (ValueError, TypeError) as exc:
        raise VerificationError(f"entry is not canonical: {exc}") from exc
    if canonical != data:
        raise VerificationError("entry bytes are not in canonical form")
    if body.get("v") != ENTRY_VERSION or body.get("kind") not in KINDS:
        raise VerificationError("entry has an unknown version or kind")
    return body

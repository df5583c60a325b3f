"""Audit entries as OCSF 1.8.0 events, for SIEMs that speak the Open Cybersecurity Schema Framework.

Every entry becomes one **API Activity** event (class_uid 6003, category 6 Application
Activity), with the ``security_control`` profile (named in ``metadata.profiles``) for the
policy's decision. Why one class: every entry records an API action on the broker, a call or an
administrative change; OCSF 1.x has no class for a policy decision about an API call (Authorize
Session, 3003, is about privileges granted to a login session, Entity Management, 3004, about
identity objects), and the profile is how OCSF adds an access-control outcome to any activity.

Per kind (``api.operation`` is always the entry kind, so nothing is lost to the mapping):

====================== =============== ===================================================
kind                   activity_id     status, decision
====================== =============== ===================================================
call.intent            99 "Invoke"     allowed by policy (action 1 Allowed, disposition 1
                                       Allowed), no status: the outcome entry has it
call.outcome           99 "Invoke"     status_code = gRPC status; status_id 1 Success for
                                       OK, else 2 Failure; PERMISSION_DENIED is a denial
                                       (action 2 Denied, disposition 2 Blocked, severity
                                       Medium), other failures severity Low
call.preview           99 "Preview"    the policy's answer in ``authorizations`` only:
                                       nothing was enforced, so no action or disposition
admin.model.*          1 Create (registered), 3 Update (updated, retired); Success
admin.policy.activated 3 Update; Success; ``policy`` names the revision
admin.key.*            1 Create (created), 3 Update (rotated); Success
admin.retention.*      3 Update (held, released), 4 Delete (erased, deleted); Success
admin.audit.viewed     2 Read (an officer opened an entry in the console); Success
admin.sandbox.violation 99 "Sandbox Violation"; Failure, action Denied, disposition Blocked,
                       severity High, ``is_alert`` true
====================== =============== ===================================================

Who and what: ``actor.user`` is the entry's subject (``org`` its tenant; ``type_id`` 3 System
for the broker's own actors). ``src_endpoint``, required by the class, names the same subject:
the log records no network address (it keeps what a compliance question needs, not more).
``resources[0]`` is the model of a call or the target of an administrative entry (its details
in ``data``). ``api.request.uid`` is the call id.

Where the proof anchor goes (see :mod:`broker.audit.siem`):

- ``metadata.uid`` = the leaf hash, 64 lowercase hex digits: OCSF's "unique identifier of the
  event", and a leaf hash is exactly that for a log entry;
- ``metadata.sequence`` = the leaf index (OCSF: "sequence number of the event", an integer);
- ``metadata.log_name`` = the log's origin;
- ``raw_data`` = the entry's canonical JSON text, byte for byte what the tree commits to, so
  ``SHA-256(0x00 || raw_data)`` recomputes the leaf hash from the record alone;
- ``unmapped.broker_audit`` repeats the anchor (``origin``, ``leaf_index``, ``leaf_hash``) in
  one place for queries, with the entry fields OCSF has no attribute for (per-field actions and
  labels, keyed digests, usage, retention ids).

``time`` is the entry time in milliseconds (OCSF ``timestamp_t``); the entry keeps microseconds.
The test suite validates these events with the JSON Schema generated from the published OCSF
1.8.0 schema (``tests/unit/audit/test_siem.py``).
"""

from __future__ import annotations

from typing import Any, Final

import grpc

from broker import __version__
from broker.audit.entry import KIND_INTENT, KIND_OUTCOME, KIND_PREVIEW
from broker.audit.siem import (
    ACTIVITY_CAPTIONS,
    SEVERITY_CAPTIONS,
    SYSTEM_ACTORS,
    SiemEntry,
)

OCSF_VERSION: Final = "1.8.0"
PROFILES: Final = ("security_control",)
CATEGORY_UID: Final = 6
CATEGORY_NAME: Final = "Application Activity"
CLASS_UID: Final = 6003
CLASS_NAME: Final = "API Activity"
PRODUCT: Final = {"name": "model-broker", "vendor_name": "model-broker", "version": __version__}

_ALLOWED: Final = 1
_DENIED: Final = 2  # action_id Denied; disposition_id 2 is Blocked
_SUCCESS: Final = 1
_FAILURE: Final = 2
_SYSTEM_USER: Final = 3
# Entry fields that have an OCSF attribute of their own; the rest go to unmapped.broker_audit.
_MAPPED: Final = frozenset(
    {"v", "kind", "time_us", "call_id", "tenant", "subject", "model", "vendor", "status"}
    | {"target", "details", "latency_us", "error_class"}
)
_GRPC_CODES: Final = {code.name: int(code.value[0]) for code in grpc.StatusCode}


def to_ocsf(item: SiemEntry) -> dict[str, Any]:
    """The OCSF API Activity event of one entry (see the module docstring for the mapping)."""
    meaning = item.meaning
    activity_name = ACTIVITY_CAPTIONS.get(meaning.activity_id, meaning.activity_name)
    severity = item.severity_id
    event: dict[str, Any] = {
        "category_uid": CATEGORY_UID,
        "category_name": CATEGORY_NAME,
        "class_uid": CLASS_UID,
        "class_name": CLASS_NAME,
        "activity_id": meaning.activity_id,
        "activity_name": activity_name,
        "type_uid": CLASS_UID * 100 + meaning.activity_id,
        "type_name": f"{CLASS_NAME}: {ACTIVITY_CAPTIONS.get(meaning.activity_id, 'Other')}",
        "severity_id": severity,
        "severity": SEVERITY_CAPTIONS[severity],
        "time": int(item.body["time_us"]) // 1000,
        "message": _message(item),
        "metadata": _metadata(item),
        "actor": {"user": _user(item)},
        "src_endpoint": {"name": item.get("subject")},
        "api": _api(item),
        "resources": [_resource(item)],
        "raw_data": item.text,
        "unmapped": {"broker_audit": _unmapped(item)},
    }
    event.update(_status(item))
    event.update(_decision(item))
    return event


def _metadata(item: SiemEntry) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "version": OCSF_VERSION,
        "product": dict(PRODUCT),
        "profiles": list(PROFILES),
        "uid": item.leaf_hash_hex,
        "sequence": item.leaf_index,
        "log_name": item.origin,
        "log_provider": "broker audit log",
        "event_code": item.kind,
    }
    if item.get("tenant"):
        metadata["tenant_uid"] = item.get("tenant")
    return metadata


def _user(item: SiemEntry) -> dict[str, Any]:
    subject = item.get("subject")
    user: dict[str, Any] = {"uid": subject, "name": subject}
    if item.kind.startswith("admin.") and subject in SYSTEM_ACTORS:
        user.update(type_id=_SYSTEM_USER, type="System")
    if item.get("tenant"):
        user["org"] = {"uid": item.get("tenant"), "name": item.get("tenant")}
    return user


def _api(item: SiemEntry) -> dict[str, Any]:
    api: dict[str, Any] = {"operation": item.kind, "service": {"name": item.meaning.service}}
    if item.get("call_id"):
        api["request"] = {"uid": item.get("call_id")}
    if item.kind == KIND_OUTCOME:
        response: dict[str, Any] = {"code": _GRPC_CODES.get(item.get("status"), 2)}
        if item.get("error_class"):
            response["error"] = item.get("error_class")
        api["response"] = response
    return api


def _resource(item: SiemEntry) -> dict[str, Any]:
    if item.kind.startswith("admin."):
        resource: dict[str, Any] = {"uid": item.get("target"), "type": item.meaning.resource_type}
        details = item.body.get("details")
        if isinstance(details, dict) and details:
            resource["data"] = dict(details)
        return resource
    resource = {"uid": item.get("model"), "name": item.get("model"), "type": "model"}
    if item.get("vendor"):
        resource["owner"] = {"uid": item.get("vendor"), "name": item.get("vendor")}
    return resource


def _status(item: SiemEntry) -> dict[str, Any]:
    if item.kind == KIND_OUTCOME:
        status = item.get("status")
        ok = status == "OK"
        out: dict[str, Any] = {
            "status_id": _SUCCESS if ok else _FAILURE,
            "status": "Success" if ok else "Failure",
            "status_code": status,
            "duration": int(item.body.get("latency_us") or 0) // 1000,
        }
        if item.get("error_class"):
            out["status_detail"] = item.get("error_class")
        return out
    if item.kind == "admin.sandbox.violation":
        return {"status_id": _FAILURE, "status": "Failure"}
    if item.kind.startswith("admin."):
        return {"status_id": _SUCCESS, "status": "Success"}
    return {}  # an intent or a preview has no status of its own


def _decision(item: SiemEntry) -> dict[str, Any]:
    """The security_control profile: what the policy (or the sandbox) decided, if anything."""
    policy = _policy(item)
    if item.kind in (KIND_INTENT, KIND_OUTCOME):
        status = "OK" if item.kind == KIND_INTENT else item.get("status")
        if status == "PERMISSION_DENIED":
            return _enforced(_DENIED, policy)
        return _enforced(_ALLOWED, policy) if status == "OK" else {}
    if item.kind == KIND_PREVIEW:
        decision = "Allowed" if item.body.get("allowed") is True else "Denied"
        return {"authorizations": [{"decision": decision, **_policy_ref(policy)}]}
    if item.kind == "admin.sandbox.violation":
        return {**_enforced(_DENIED, None), "is_alert": True}
    if item.kind == "admin.policy.activated":
        return {"policy": {"uid": item.get("target"), "name": "broker policy bundle"}}
    return {}


def _policy(item: SiemEntry) -> dict[str, Any] | None:
    revision = item.get("policy_revision")
    if not revision:
        return None
    return {"uid": revision, "name": "broker policy bundle", "is_applied": True}


def _policy_ref(policy: dict[str, Any] | None) -> dict[str, Any]:
    return {} if policy is None else {"policy": policy}


def _enforced(action_id: int, policy: dict[str, Any] | None) -> dict[str, Any]:
    decision = "Allowed" if action_id == _ALLOWED else "Denied"
    out: dict[str, Any] = {
        "action_id": action_id,
        "action": decision,
        "disposition_id": action_id,  # 1 Allowed, 2 Blocked: the same numbers as the action
        "disposition": "Allowed" if action_id == _ALLOWED else "Blocked",
        "authorizations": [{"decision": decision, **_policy_ref(policy)}],
    }
    if policy is not None:
        out["policy"] = policy
    return out


def _unmapped(item: SiemEntry) -> dict[str, Any]:
    extra = {key: value for key, value in item.body.items() if key not in _MAPPED}
    return {**item.anchor(), "kind": item.kind, **extra}


def _message(item: SiemEntry) -> str:
    who = item.get("subject") or "-"
    if item.kind.startswith("admin."):
        return f"{item.meaning.caption}: {item.get('target')} by {who}"
    text = f"{item.meaning.caption}: {who} -> {item.get('model')}"
    return f"{text} ({item.get('status')})" if item.kind == KIND_OUTCOME else text

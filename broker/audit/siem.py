"""What a SIEM record of an audit entry keeps: the entry, its place in the log, its kind's meaning.

Every record sent to a SIEM (OCSF in :mod:`broker.audit.ocsf`, CEF in :mod:`broker.audit.cef`,
JSON lines from ``broker audit tail``) carries the *anchor* of its entry:

- the log's **origin** (the first line of its checkpoints, e.g. ``broker.local/audit``);
- the entry's **leaf index** (0-based position in the Merkle tree);
- the entry's **leaf hash**, ``SHA-256(0x00 || entry bytes)`` (RFC 6962 section 2.1), as 64
  lowercase hex digits. Hex, not the base64 of exports and receipts: SIEM search boxes and
  regular expressions handle hex, and no base64 alphabet character needs escaping in CEF.

With the anchor, a record found in a SIEM is proven without trusting the SIEM or the shipper:
``broker audit prove --leaf-index N`` fetches the entry's receipt, and ``broker audit
verify-receipt FILE --log-key VKEY --leaf-hash HEX`` checks the receipt against the signed
checkpoint and that it proves exactly the leaf the record names.

The leaf hash is always computed here from the entry bytes, never copied from a database column,
so a record cannot name a hash its own bytes do not have. Entries hold commitments, never payload
values (see :mod:`broker.audit.entry`), and these records copy nothing but entry fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from broker.audit.entry import KIND_INTENT, KIND_OUTCOME, KIND_PREVIEW, parse_entry
from broker.audit.merkle import VerificationError, leaf_hash

# OCSF activity ids of API Activity (class 6003), and their captions.
CREATE: Final = 1
READ: Final = 2
UPDATE: Final = 3
DELETE: Final = 4
OTHER: Final = 99
ACTIVITY_CAPTIONS: Final = {CREATE: "Create", READ: "Read", UPDATE: "Update", DELETE: "Delete"}

# OCSF severity ids and their captions; CEF severities (0-10) follow from them.
INFORMATIONAL: Final = 1
LOW: Final = 2
MEDIUM: Final = 3
HIGH: Final = 4
SEVERITY_CAPTIONS: Final = {
    INFORMATIONAL: "Informational",
    LOW: "Low",
    MEDIUM: "Medium",
    HIGH: "High",
}

#: Actors that are the broker itself, not a person or a calling service.
SYSTEM_ACTORS: Final = frozenset({"broker", "sandbox", "retention-scheduler", "erasure"})


@dataclass(frozen=True, slots=True)
class KindMeaning:
    """How one entry kind reads in a SIEM: a caption, an OCSF activity, the gRPC service."""

    caption: str
    activity_id: int
    activity_name: str
    service: str
    resource_type: str


#: Every kind the log writes (``broker.audit.entry.KINDS``), and what it means to a SIEM.
KIND_MEANINGS: Final[Mapping[str, KindMeaning]] = {
    KIND_INTENT: KindMeaning("Model call intent", OTHER, "Invoke", "broker.v1.Broker", "model"),
    KIND_OUTCOME: KindMeaning("Model call outcome", OTHER, "Invoke", "broker.v1.Broker", "model"),
    KIND_PREVIEW: KindMeaning("Policy preview", OTHER, "Preview", "broker.v1.Broker", "model"),
    "admin.model.registered": KindMeaning(
        "Model registered", CREATE, "Create", "broker.v1.Registry", "model"
    ),
    "admin.model.updated": KindMeaning(
        "Model updated", UPDATE, "Update", "broker.v1.Registry", "model"
    ),
    "admin.model.retired": KindMeaning(
        "Model retired", UPDATE, "Update", "broker.v1.Registry", "model"
    ),
    "admin.policy.activated": KindMeaning(
        "Policy activated", UPDATE, "Update", "broker.v1.Policies", "policy_revision"
    ),
    "admin.key.created": KindMeaning("Key created", CREATE, "Create", "broker", "key"),
    "admin.key.rotated": KindMeaning("Key rotated", UPDATE, "Update", "broker", "key"),
    "admin.retention.held": KindMeaning(
        "Retained data held", UPDATE, "Update", "broker.v1.Retention", "retention_target"
    ),
    "admin.retention.released": KindMeaning(
        "Retained data released", UPDATE, "Update", "broker.v1.Retention", "retention_target"
    ),
    "admin.retention.erased": KindMeaning(
        "Retained data erased", DELETE, "Delete", "broker.v1.Retention", "retention_target"
    ),
    "admin.retention.deleted": KindMeaning(
        "Retained record deleted", DELETE, "Delete", "broker", "retained_record"
    ),
    "admin.audit.viewed": KindMeaning(
        "Audit entry viewed", READ, "Read", "broker.v1.Audit", "audit_entry"
    ),
    "admin.sandbox.violation": KindMeaning(
        "Sandbox violation", OTHER, "Sandbox Violation", "broker", "model"
    ),
}


@dataclass(frozen=True, slots=True)
class SiemEntry:
    """One entry ready for a SIEM: its anchor (origin, index, leaf hash), text and body."""

    origin: str
    leaf_index: int
    leaf_hash: bytes
    text: str
    body: Mapping[str, Any]

    @property
    def leaf_hash_hex(self) -> str:
        """The leaf hash as 64 lowercase hex digits (the form SIEM records carry)."""
        return self.leaf_hash.hex()

    @property
    def kind(self) -> str:
        """The entry kind, e.g. ``call.outcome``."""
        return str(self.body["kind"])

    @property
    def meaning(self) -> KindMeaning:
        """What the kind means to a SIEM."""
        return KIND_MEANINGS[self.kind]

    def get(self, key: str) -> str:
        """A string field of the entry ("" when absent or null)."""
        value = self.body.get(key)
        return "" if value is None else str(value)

    @property
    def severity_id(self) -> int:
        """OCSF severity: denials Medium, other failed calls Low, sandbox violations High."""
        if self.kind == "admin.sandbox.violation":
            return HIGH
        if self.kind == KIND_OUTCOME:
            status = self.get("status")
            if status == "PERMISSION_DENIED":
                return MEDIUM
            if status != "OK":
                return LOW
        return INFORMATIONAL

    def anchor(self) -> dict[str, Any]:
        """Origin, leaf index and hex leaf hash: what proves the record against a checkpoint."""
        return {
            "origin": self.origin,
            "leaf_index": self.leaf_index,
            "leaf_hash": self.leaf_hash_hex,
        }


def siem_entry(origin: str, leaf_index: int, entry: bytes) -> SiemEntry:
    """Parse one stored entry for a SIEM; VerificationError naming the leaf if it is malformed.

    The entry must be canonical, versioned and of a known kind (``parse_entry``): a damaged
    row is refused here rather than shipped with a hash that can never be proven.
    """
    if isinstance(leaf_index, bool) or not isinstance(leaf_index, int) or leaf_index < 0:
        raise VerificationError(f"{leaf_index!r} is not a leaf index")
    if not origin or "\n" in origin:
        raise VerificationError("the log origin must be one non-empty line")
    try:
        body = parse_entry(entry)
    except VerificationError as exc:
        raise VerificationError(f"leaf {leaf_index}: {exc}") from exc
    return SiemEntry(origin, leaf_index, leaf_hash(entry), entry.decode("utf-8"), body)

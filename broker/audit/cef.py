"""Audit entries as ArcSight Common Event Format (CEF) lines, for SIEMs that ingest syslog CEF.

One line per entry::

    CEF:0|model-broker|model-broker|0.1.0|call.outcome|Model call outcome|5|rt=... cn1Label=...

- the signature id is the entry kind, the name its caption
  (:data:`broker.audit.siem.KIND_MEANINGS`); the severity (0-10) follows the OCSF severity:
  1 informational, 3 low (a failed call), 5 medium (a denial), 8 high (a sandbox violation);
- header fields escape ``\\`` and ``|`` with a backslash; a line break cannot be escaped in a
  header, so it becomes a space (no header field comes from a caller today: kinds and captions
  are fixed, but the rule holds whatever changes);
- extension values escape ``\\`` and ``=`` with a backslash and line breaks as ``\\n``/``\\r``
  (the CEF specification's rules); keys are fixed ASCII names.

Extension keys (CEF dictionary names where one fits, labelled custom fields otherwise):

=========== ===================================================================
key         value
=========== ===================================================================
rt          entry time, milliseconds since the Unix epoch
cn1         leaf index (``cn1Label=leafIndex``)
cs1         leaf hash, 64 lowercase hex digits (``cs1Label=leafHash``)
cs2         log origin (``cs2Label=logOrigin``)
cs3         tenant (``cs3Label=tenant``)
suser       subject: the caller, or the actor of an administrative entry
cs4         model of a call, target of an administrative entry (``cs4Label=model`` or
            ``cs4Label=target``)
cs5         policy revision, when the entry has one (``cs5Label=policyRevision``)
externalId  call id, for call entries
outcome     gRPC status of a call outcome (``OK``, ``PERMISSION_DENIED``, ...)
reason      error class of a failed call
cn2         latency in milliseconds of a call outcome (``cn2Label=latencyMs``)
act         the entry kind again (what happened), for rules keyed on ``act``
=========== ===================================================================

The leaf index, hash and origin prove the line against a signed checkpoint (see
:mod:`broker.audit.siem`). No payload value appears: entries hold none.
"""

from __future__ import annotations

from typing import Final

from broker import __version__
from broker.audit.entry import KIND_OUTCOME
from broker.audit.siem import HIGH, INFORMATIONAL, LOW, MEDIUM, SiemEntry

VENDOR: Final = "model-broker"
PRODUCT: Final = "model-broker"
_SEVERITY: Final = {INFORMATIONAL: 1, LOW: 3, MEDIUM: 5, HIGH: 8}


def escape_header(value: str) -> str:
    """A CEF header field: backslash and pipe escaped, line breaks turned into spaces."""
    text = value.replace("\\", "\\\\").replace("|", "\\|")
    return text.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")


def escape_extension(value: str) -> str:
    """A CEF extension value: backslash and ``=`` escaped, line breaks as ``\\n`` and ``\\r``."""
    text = value.replace("\\", "\\\\").replace("=", "\\=")
    return text.replace("\r\n", "\\n").replace("\r", "\\r").replace("\n", "\\n")


def to_cef(item: SiemEntry) -> str:
    """The CEF line of one entry, without a line break at the end."""
    header = [
        "CEF:0",
        escape_header(VENDOR),
        escape_header(PRODUCT),
        escape_header(__version__),
        escape_header(item.kind),
        escape_header(item.meaning.caption),
        str(_SEVERITY[item.severity_id]),
    ]
    extension = " ".join(
        f"{key}={escape_extension(value)}" for key, value in _extension(item) if value != ""
    )
    return "|".join(header) + "|" + extension


def _extension(item: SiemEntry) -> list[tuple[str, str]]:
    admin = item.kind.startswith("admin.")
    pairs = [
        ("rt", str(int(item.body["time_us"]) // 1000)),
        ("cn1Label", "leafIndex"),
        ("cn1", str(item.leaf_index)),
        ("cs1Label", "leafHash"),
        ("cs1", item.leaf_hash_hex),
        ("cs2Label", "logOrigin"),
        ("cs2", item.origin),
        ("cs3Label", "tenant"),
        ("cs3", item.get("tenant")),
        ("suser", item.get("subject")),
        ("cs4Label", "target" if admin else "model"),
        ("cs4", item.get("target") if admin else item.get("model")),
        ("act", item.kind),
    ]
    if item.get("policy_revision"):
        pairs += [("cs5Label", "policyRevision"), ("cs5", item.get("policy_revision"))]
    if item.get("call_id"):
        pairs.append(("externalId", item.get("call_id")))
    if item.kind == KIND_OUTCOME:
        pairs += [
            ("outcome", item.get("status")),
            ("reason", item.get("error_class")),
            ("cn2Label", "latencyMs"),
            ("cn2", str(int(item.body.get("latency_us") or 0) // 1000)),
        ]
    return pairs

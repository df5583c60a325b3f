"""Domain types of retention: what a record is, what a deletion receipt says, time in microseconds.

Kept apart from the stores so the servicer, the scheduler and the call path share one
vocabulary without importing SQL.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from broker.logging import get_logger

_log = get_logger(__name__)

#: Longest TTL a policy may ask for (ten years); longer is almost surely a unit mistake.
MAX_TTL_SECONDS: Final = 10 * 366 * 24 * 3600
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


class PayloadKind(enum.StrEnum):
    """Which half of a call a record holds; bound into its ciphertext as associated data."""

    REQUEST = "request"
    RESPONSE = "response"


class DeletionReason(enum.StrEnum):
    """Why a record was destroyed: its TTL ran out, or someone ordered an erasure."""

    TTL = "ttl"
    ERASURE = "erasure"


@dataclass(frozen=True, slots=True)
class RecordInfo:
    """A retained record's metadata (never its payload).

    ``key_id`` names the tenant key version that wraps the record's data key
    (``kek/<tenant>/v<n>``). ``tenant_held`` is true when a tenant-wide hold covers it, which
    blocks deletion just like ``held``.
    """

    record_id: str
    tenant: str
    subject: str
    call_id: str
    model: str
    kind: PayloadKind
    create_time: datetime
    due_time: datetime
    held: bool
    tenant_held: bool
    key_id: str
    size_bytes: int

    @property
    def deletion_blocked(self) -> bool:
        """True while a record or tenant hold keeps the record past its due time."""
        return self.held or self.tenant_held


@dataclass(frozen=True, slots=True)
class EraseResult:
    """What an erasure did: records destroyed, records kept by a legal hold, KEKs destroyed."""

    erased: int
    held: int
    keys_destroyed: int


#: ``on_deleted(record_id, due_time, done_time, key_id, reason)``: called once a deletion is
#: committed, with the data key's id (``dek/<record id>@kek/<tenant>/v<n>``). Delivery is at
#: least once: if the process dies after the call but before the receipt is marked delivered,
#: it is called again for that record, so the sink must treat ``record_id`` as an idempotency
#: key (for example: skip if the audit log already has a deletion entry for it).
DeletionHook = Callable[[str, datetime, datetime, str, DeletionReason], None]


def log_deletion(
    record_id: str, due_time: datetime, done_time: datetime, key_id: str, reason: DeletionReason
) -> None:
    """The default :data:`DeletionHook`: one structured log event per deletion."""
    _log.info(
        "retention_record_deleted",
        record_id=record_id,
        due_time=due_time.isoformat(),
        done_time=done_time.isoformat(),
        key_id=key_id,
        reason=reason.value,
    )


def to_us(moment: datetime) -> int:
    """Microseconds since the Unix epoch; naive datetimes are refused, not guessed at."""
    if moment.tzinfo is None:
        raise ValueError("retention times must be timezone-aware")
    return (moment - _EPOCH) // _MICROSECOND


def from_us(value: int) -> datetime:
    """The inverse of :func:`to_us`, in UTC."""
    return _EPOCH + value * _MICROSECOND


def utcnow() -> datetime:
    """The wall clock, in UTC (the default clock everywhere; tests inject their own)."""
    return datetime.now(UTC)

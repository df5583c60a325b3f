"""The audit records of one call, written at the moments the log's promises need.

- **intent**, before anything leaves the broker: which model, which tenant and subject, under
  which policy revision, what each field became, and a keyed digest of the exact bytes sent;
- **outcome**, before the answer (or the error) reaches the caller: status, latency, a keyed
  digest of the answer, and a link to the intent's leaf.

If either cannot be written the call fails with UNAVAILABLE (the log's own error): before the
intent nothing has been sent; after the answer, the buyer does not get an unaudited answer.
Every call the buyer is told about (answered, denied, failed) therefore has an outcome entry:
one that could not be written when the call ended is handed to ``late`` (a
:class:`~broker.calls.late_outcomes.LateOutcomes`), which writes it, saying UNAVAILABLE as the
caller was told, once the log accepts writes again.

With the outcome goes the call's usage record (:mod:`broker.metering.records`), in the same
transaction: billed units, cost, and the outcome's leaf index. So every call has exactly one
usage record, written exactly when its outcome is, and no record exists without its entry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import orjson

from broker.audit.entry import FieldAction
from broker.audit.store import Companion, Receipt
from broker.audit.writer import AuditLog
from broker.auth.principal import Principal
from broker.calls.late_outcomes import LateOutcomes
from broker.calls.payload import JsonObject
from broker.enforce.enforcer import FieldDecision
from broker.errors import BrokerError, Unavailable
from broker.metering.records import (
    Metered,
    count_scalars,
    meter,
    tokens_of,
    usage_companion,
)
from broker.registry.model import ModelVersion
from broker.registry.pricing import Pricing, Units
from broker.runtimes.base import call_cpu_us


def field_actions(decisions: Iterable[FieldDecision]) -> list[FieldAction]:
    """Decisions as audit field actions; entity actions become ``entity.<action>`` rows.

    An entity row carries how many entities of its label the field held (never their values).
    """
    rows: list[FieldAction] = []
    for decision in decisions:
        rows.append(FieldAction(decision.path, decision.labels, decision.action))
        rows.extend(
            FieldAction(decision.path, (entity.label,), f"entity.{entity.action}", entity.count)
            for entity in decision.entities
        )
    return rows


@dataclass
class CallRecord:
    """The audit trail of one Invoke as it happens."""

    log: AuditLog
    principal: Principal
    call_id: str
    requested_model: str
    started: float = field(default_factory=time.perf_counter)
    model: ModelVersion | None = None
    intent: Receipt | None = None
    bytes_in: int = 0  # JSON bytes sent to the model (set with the intent)
    elements: int = 0  # scalar values sent to the model (set with the intent)
    late: LateOutcomes | None = None  # writes an outcome the log refused, once it can

    def __post_init__(self) -> None:
        call_cpu_us.set(0)  # the sandbox adds this call's CPU time (broker.runtimes.base)

    def record_intent(
        self,
        revision: str,
        decisions: Iterable[FieldDecision],
        sent: JsonObject,
        *,
        companions: Sequence[Companion] = (),
    ) -> None:
        """Durably record what is about to leave, before it leaves.

        ``companions`` (the call's token-vault rows) are committed with the intent.
        """
        model = self._model()
        request = orjson.dumps(sent)
        self.bytes_in, self.elements = len(request), count_scalars(sent)
        self.intent = self.log.record_call_intent(
            call_id=self.call_id,
            tenant=self.principal.tenant,
            subject=self.principal.subject,
            model=model.ref,
            vendor=model.vendor,
            policy_revision=revision,
            fields=field_actions(decisions),
            request=request,
            companions=companions,
        )

    def record_success(
        self,
        answer: JsonObject,
        *,
        usage: Mapping[str, int] | None = None,
        retained: Sequence[str] = (),
    ) -> Receipt:
        """The call's answer is about to reach the buyer (``usage``: the model's token counts;
        ``retained``: the ids of the records kept of this call)."""
        return self._outcome("OK", orjson.dumps(answer), "", usage=usage, retained=retained)

    def record_failure(self, error: BrokerError) -> Receipt:
        """The call ends with ``error``; recorded before the caller learns of it."""
        return self._outcome(error.code.name, None, type(error).__name__)

    def record_stream_outcome(
        self,
        status: str,
        delivered: bytes,
        *,
        error_class: str = "",
        usage: Mapping[str, int] | None = None,
        delta_chunks: int,
        partial: bool,
        retained: Sequence[str] = (),
    ) -> Receipt:
        """A streamed answer ended; ``delivered`` is every byte of text the buyer was sent.

        The digest covers what was delivered even when the stream broke or the buyer left, so
        the log commits to exactly the partial answer the buyer may hold.
        """
        return self._outcome(
            status,
            delivered,
            error_class,
            usage=usage,
            stream={"delta_chunks": delta_chunks, "partial": partial},
            retained=retained,
        )

    def _outcome(
        self,
        status: str,
        answer: bytes | None,
        error_class: str,
        *,
        usage: Mapping[str, int] | None = None,
        stream: Mapping[str, int | bool] | None = None,
        retained: Sequence[str] = (),
    ) -> Receipt:
        latency_us = int((time.perf_counter() - self.started) * 1_000_000)
        try:
            return self._write_outcome(
                status, answer, error_class, usage, stream, retained, latency_us
            )
        except Unavailable:
            if self.late is not None:
                self.late.add(
                    self.call_id, self._late_outcome(answer, usage, stream, retained, latency_us)
                )
            raise

    def _late_outcome(
        self,
        answer: bytes | None,
        usage: Mapping[str, int] | None,
        stream: Mapping[str, int | bool] | None,
        retained: Sequence[str],
        latency_us: int,
    ) -> Callable[[], Receipt]:
        """The outcome as the caller was told it: UNAVAILABLE; a unary answer withheld, a
        stream's delivered part kept (the buyer holds it)."""
        if stream is not None:
            stream = {**stream, "partial": True}
        kept = answer if stream is not None else None
        return lambda: self._write_outcome(
            "UNAVAILABLE", kept, Unavailable.__name__, usage, stream, retained, latency_us
        )

    def _write_outcome(  # noqa: PLR0917 - the outcome's fields, as _outcome takes them
        self,
        status: str,
        answer: bytes | None,
        error_class: str,
        usage: Mapping[str, int] | None,
        stream: Mapping[str, int | bool] | None,
        retained: Sequence[str],
        latency_us: int,
    ) -> Receipt:
        model = self.model
        delivered = self.intent is not None and (
            status == "OK" if stream is None else bool(stream["delta_chunks"])
        )
        metered = self._metered(model, delivered, answer, usage, stream)
        principal = self.principal

        def usage_row(time_us: int) -> tuple[Companion, ...]:
            return (
                usage_companion(
                    metered,
                    time_us=time_us,
                    call_id=self.call_id,
                    tenant=principal.tenant,
                    subject=principal.subject,
                    vendor=model.vendor if model else "",
                    model=model.ref if model else self.requested_model[:200],
                    status=status,
                ),
            )

        return self.log.record_call_outcome(
            call_id=self.call_id,
            tenant=self.principal.tenant,
            subject=self.principal.subject,
            model=model.ref if model else self.requested_model[:200],
            vendor=model.vendor if model else "",
            intent_index=self.intent.leaf_index if self.intent else None,
            status=status,
            latency_us=latency_us,
            response=answer,
            error_class=error_class,
            usage=usage,
            stream=stream,
            retained_record_ids=retained,
            metering=metered.as_audit(),
            companions_at=usage_row,
        )

    def _metered(
        self,
        model: ModelVersion | None,
        delivered: bool,
        answer: bytes | None,
        usage: Mapping[str, int] | None,
        stream: Mapping[str, int | bool] | None,
    ) -> Metered:
        """What the call is billed for: nothing unless the buyer got (part of) an answer."""
        pricing = model.pricing if model is not None else Pricing()
        if not delivered:
            return meter(pricing, Units(), bytes_in=self.bytes_in, bytes_out=0)
        chunks = int(stream["delta_chunks"]) if stream is not None else 0
        input_tokens, output_tokens = tokens_of(
            usage, delivered_chunks=chunks, streamed=stream is not None
        )
        units = Units(
            calls=1,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            tensor_elements=self.elements,
            cpu_us=call_cpu_us.get(),
        )
        return meter(pricing, units, bytes_in=self.bytes_in, bytes_out=len(answer or b""))

    def _model(self) -> ModelVersion:
        if self.model is None:
            raise RuntimeError("the model is resolved before the intent is recorded")
        return self.model

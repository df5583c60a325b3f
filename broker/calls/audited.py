"""The audit records of one call, written at the moments the log's promises need.

- **intent**, before anything leaves the broker: which model, which tenant and subject, under
  which policy revision, what each field became, and a keyed digest of the exact bytes sent;
- **outcome**, before the answer (or the error) reaches the caller: status, latency, a keyed
  digest of the answer, and a link to the intent's leaf.

If either cannot be written the call fails with UNAVAILABLE (the log's own error): before the
intent nothing has been sent; after the answer, the buyer does not get an unaudited answer.
Every call the buyer is told about (answered, denied, failed) therefore has an outcome entry.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import orjson

from broker.audit.entry import FieldAction
from broker.audit.store import Companion, Receipt
from broker.audit.writer import AuditLog
from broker.auth.principal import Principal
from broker.calls.payload import JsonObject
from broker.enforce.enforcer import FieldDecision
from broker.errors import BrokerError
from broker.registry.model import ModelVersion


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
        self.intent = self.log.record_call_intent(
            call_id=self.call_id,
            tenant=self.principal.tenant,
            subject=self.principal.subject,
            model=model.ref,
            vendor=model.vendor,
            policy_revision=revision,
            fields=field_actions(decisions),
            request=orjson.dumps(sent),
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
        model = self.model
        return self.log.record_call_outcome(
            call_id=self.call_id,
            tenant=self.principal.tenant,
            subject=self.principal.subject,
            model=model.ref if model else self.requested_model[:200],
            vendor=model.vendor if model else "",
            intent_index=self.intent.leaf_index if self.intent else None,
            status=status,
            latency_us=int((time.perf_counter() - self.started) * 1_000_000),
            response=answer,
            error_class=error_class,
            usage=usage,
            stream=stream,
            retained_record_ids=retained,
        )

    def _model(self) -> ModelVersion:
        if self.model is None:
            raise RuntimeError("the model is resolved before the intent is recorded")
        return self.model

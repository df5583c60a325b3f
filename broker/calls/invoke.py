"""One call, end to end: resolve, classify, decide, enforce, dispatch, and back again.

    request  -> resolve model -> classify -> decide (Rego) -> enforce -> store tokens
             -> audit intent -> dispatch to the model (caller's deadline)
    answer   -> classify -> decide (response) -> enforce -> restore the buyer's own values
             -> retain (if the policy says so) -> audit outcome -> the buyer

Each step is its own module; this file is the readable list of steps. ``preview`` runs the
request half without storing or sending anything.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from broker.audit.store import Receipt
from broker.audit.writer import AuditLog
from broker.auth.principal import Principal, Role, require_role
from broker.calls.audited import CallRecord, field_actions
from broker.calls.chat import close_tool_arguments, open_tool_arguments
from broker.calls.concurrency import TenantConcurrencyLimiter
from broker.calls.decide import Decider, labels_of, refuse_if_denied
from broker.calls.late_outcomes import LateOutcomes
from broker.calls.payload import JsonObject
from broker.calls.retain import refuse_unkeepable, retain_call
from broker.classify.classifier import classify
from broker.enforce.enforcer import CallScope, Enforcer, FieldDecision
from broker.enforce.restore import Restorer
from broker.enforce.vault import TokenVault
from broker.errors import BrokerError, DeadlineExceeded, FailedPrecondition
from broker.metering.limits import Quotas
from broker.observability.metrics import count_actions
from broker.observability.stages import stage
from broker.policy import Plan
from broker.registry.model import ModelVersion, Runtime
from broker.registry.refs import ModelRef
from broker.retention.records import RetentionStore
from broker.runtimes.base import Runtime as RuntimeClient
from broker.runtimes.openai.types import usage_from_answer


class ModelResolver(Protocol):
    """What the call path needs from the registry."""

    def resolve(self, ref: ModelRef, *, callable_only: bool) -> ModelVersion:
        """Return the model version a reference names (NotFound, FailedPrecondition)."""
        ...


Canceller = Callable[[Callable[[], None]], None]


@dataclass(frozen=True, slots=True)
class CallRequest:
    """What the buyer asked for: model, payload, purpose and its own field labels."""

    model_ref: str
    payload: JsonObject
    purpose: str = ""
    labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InvokeResult:
    """What Invoke answers: the call id, the model, the answer and what the policy did."""

    call_id: str
    model: ModelVersion
    answer: JsonObject
    decisions: tuple[FieldDecision, ...]
    policy_revision: str
    restored_values: int
    retained_record_ids: tuple[str, ...] = ()
    receipt: Receipt | None = None
    intent_leaf_index: int = -1
    usage: Mapping[str, int] | None = None


@dataclass(frozen=True, slots=True)
class PreviewResult:
    """What Invoke would do: the plan and the per-field decisions, no values."""

    model: ModelVersion
    plan: Plan
    decisions: tuple[FieldDecision, ...]
    unmatched_label_keys: tuple[str, ...]
    receipt: Receipt | None = None


@dataclass(frozen=True, slots=True)
class Enforcement:
    """The enforcement pieces the call path uses."""

    decider: Decider
    enforcer: Enforcer
    vault: TokenVault
    restorer: Restorer


class Invoker:
    """Runs Invoke and Preview for authenticated buyers."""

    def __init__(
        self,
        resolver: ModelResolver,
        runtimes: Mapping[Runtime, RuntimeClient],
        limiter: TenantConcurrencyLimiter,
        enforcement: Enforcement,
        audit: AuditLog,
        *,
        default_timeout: float,
        default_purpose: str = "default",
        retention: RetentionStore | None = None,
        quotas: Quotas | None = None,
        late_outcomes: LateOutcomes | None = None,
    ) -> None:
        self._retention = retention
        self._quotas = quotas  # rate limits and budgets (broker.metering.limits); None: none
        self._late = late_outcomes  # outcomes the log refused, written once it can
        self._audit = audit
        self._resolver = resolver
        self._runtimes = dict(runtimes)
        self._limiter = limiter
        self._enforcement = enforcement
        self._default_timeout = default_timeout
        self._default_purpose = default_purpose

    def preview(self, principal: Principal, request: CallRequest) -> PreviewResult:
        """Classify and decide the request direction; nothing is stored or sent."""
        require_role(principal, Role.BUYER)
        model = self._resolve(request.model_ref)
        decider = self._enforcement.decider
        classification = decider.classify_request(model, request.payload, request.labels)
        plan = decider.decide("request", principal, model, self._purpose(request), classification)
        decisions: tuple[FieldDecision, ...] = ()
        if plan.allow:
            scope = CallScope(principal.tenant, "preview", model.runtime is Runtime.SANDBOX)
            enforced = self._enforcement.enforcer.apply(
                request.payload, classification, plan, scope, "request"
            )
            decisions = tuple(enforced.decisions)
        receipt = self._audit.record_call_preview(
            call_id=uuid.uuid4().hex,
            tenant=principal.tenant,
            subject=principal.subject,
            model=model.ref,
            vendor=model.vendor,
            policy_revision=plan.revision,
            fields=field_actions(decisions),
            allowed=plan.allow,
        )
        return PreviewResult(model, plan, decisions, classification.unmatched_keys, receipt)

    def invoke(
        self,
        principal: Principal,
        request: CallRequest,
        *,
        time_remaining: float | None,
        on_cancel: Canceller | None = None,
    ) -> InvokeResult:
        """Call the model on behalf of ``principal`` under the buyer's policy, audited.

        ``time_remaining`` is the caller's deadline in seconds (None: the configured default);
        it is passed on to the model. ``on_cancel`` registers a function to run if the caller
        goes away, so the backend call stops too. Every outcome, success or error, is in the
        audit log before the caller sees it.
        """
        require_role(principal, Role.BUYER)
        call_id = uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(call_id=call_id)
        record = CallRecord(self._audit, principal, call_id, request.model_ref, late=self._late)
        try:
            result = self._invoke(
                principal, request, record, time_remaining=time_remaining, on_cancel=on_cancel
            )
        except BrokerError as exc:
            record.record_failure(exc)
            raise
        with stage("audit_outcome"):
            receipt = record.record_success(
                result.answer, usage=result.usage, retained=result.retained_record_ids
            )
        return dataclasses.replace(
            result,
            receipt=receipt,
            intent_leaf_index=record.intent.leaf_index if record.intent else -1,
        )

    def _invoke(
        self,
        principal: Principal,
        request: CallRequest,
        record: CallRecord,
        *,
        time_remaining: float | None,
        on_cancel: Canceller | None,
    ) -> InvokeResult:
        call_id = record.call_id
        deadline = time.monotonic() + (
            self._default_timeout if time_remaining is None else time_remaining
        )
        with stage("resolve"):
            model = record.model = self._resolve(request.model_ref)
            runtime = self._runtime_for(model)
        self._admit(principal.tenant, model)
        parts = self._enforcement
        purpose = self._purpose(request)
        with self._limiter.slot(principal.tenant):
            with stage("classify"):
                chat = open_tool_arguments(request.payload)  # see broker.calls.chat
                classification = parts.decider.classify_request(model, chat.payload, request.labels)
            with stage("decide"):
                plan = parts.decider.decide("request", principal, model, purpose, classification)
            structlog.contextvars.bind_contextvars(policy_revision=plan.revision)
            refuse_if_denied(plan, "request")
            refuse_unkeepable(plan, self._retention)
            scope = CallScope(principal.tenant, call_id, model.runtime is Runtime.SANDBOX)
            with stage("enforce"):
                outgoing = parts.enforcer.apply(
                    chat.payload, classification, plan, scope, "request"
                )
                close_tool_arguments(outgoing.payload, chat.opened)
                # Vault rows commit with the intent, the answer is restored from ``tokens``: see
                # broker.enforce.vault (durable before dispatch, one commit instead of two).
                tokens = parts.vault.seal(principal.tenant, call_id, outgoing.pending_tokens)
            count_actions("request", outgoing.decisions)
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise DeadlineExceeded("the call's deadline expired before the model was called")
            with stage("audit_intent"):
                record.record_intent(
                    plan.revision,
                    outgoing.decisions,
                    outgoing.payload,
                    companions=tokens.companion(),
                )
            with stage("dispatch"):
                answer = runtime.invoke(
                    model,
                    outgoing.payload,
                    timeout=timeout,
                    call_id=call_id,
                    on_cancel=on_cancel,
                    tenant=principal.tenant,
                )
            usage = usage_from_answer(answer)
            with stage("classify"):
                answer_chat = open_tool_arguments(answer)
                answer = answer_chat.payload
                answer_classification = classify(answer)
            with stage("decide"):
                answer_plan = parts.decider.decide(
                    "response",
                    principal,
                    model,
                    purpose,
                    answer_classification,
                    request_labels=labels_of(classification),
                )
            refuse_if_denied(answer_plan, "response")
            with stage("enforce"):
                incoming = parts.enforcer.apply(
                    answer, answer_classification, answer_plan, scope, "response"
                )
            count_actions("response", incoming.decisions)
            with stage("restore"):
                restored, count = parts.restorer.restore(
                    incoming.payload, principal.tenant, call_id, issued=tokens
                )
                close_tool_arguments(restored, answer_chat.opened)
            retained = retain_call(
                self._retention,
                plan,
                principal=principal,
                model=model,
                call_id=call_id,
                request=request.payload,
                answer=restored,
            )
        return InvokeResult(
            call_id=call_id,
            model=model,
            answer=restored,
            decisions=(*outgoing.decisions, *incoming.decisions),
            policy_revision=plan.revision,
            restored_values=count,
            retained_record_ids=retained,
            usage=usage.as_audit() if usage is not None else None,
        )

    def _purpose(self, request: CallRequest) -> str:
        return request.purpose or self._default_purpose

    def _resolve(self, model_ref: str) -> ModelVersion:
        model = self._resolver.resolve(ModelRef.parse(model_ref, field="model"), callable_only=True)
        structlog.contextvars.bind_contextvars(model=model.ref, vendor=model.vendor)
        return model

    def _admit(self, tenant: str, model: ModelVersion) -> None:
        """The tenant's rate limits and budgets (QuotaExceeded), if it has any."""
        if self._quotas:  # falsy without rules: a call with no quota pays no query
            with stage("quota"):
                self._quotas.admit(tenant, model)

    def _runtime_for(self, model: ModelVersion) -> RuntimeClient:
        runtime = self._runtimes.get(model.runtime)
        if runtime is None:
            raise FailedPrecondition(
                f"model {model.ref} uses the {model.runtime.value} runtime, "
                "which this broker does not serve"
            )
        return runtime

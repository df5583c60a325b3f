"""InvokeStream: one streamed chat call, end to end, with the policy applied both ways.

    request -> resolve -> classify (tool arguments opened, see ``chat``) -> decide -> enforce
            -> decide the answer side -> store tokens -> audit intent -> ``StreamOpened``
            -> open the vendor's stream (caller's deadline; cancelled when the buyer leaves)
    chunks  -> per text channel (each choice's content, each tool call's arguments):
               ``StreamingScanner`` (entity actions) then ``StreamingRestorer`` (the buyer's
               tokens of this call only) then ``CiphertextRestorer`` (the ciphertexts this
               call's ``encrypt`` actions issued, if any) -> ``StreamDelta``
    end     -> retain (if the policy says so) -> audit outcome (usage, digest of the delivered
               text, partial?) -> ``StreamSummary``

**The answer-side decision is made once, before the vendor is called**, with every label the
detectors can report as an entity of the content (see ``_answer_plan``). Why not per label, as
entities appear: a decision in the middle of the stream could only end the answer half-way, and
it would put a policy evaluation (a cache miss the first time) on the path of the first chunk.
Deciding up front costs nothing per call (the input has the same shape every time, so the plan
cache answers), gives the scanner a fixed action table, and fails closed: a policy that would
*deny* answers holding some label denies every stream for that buyer, model and purpose, before
anything is sent. Policies should give answer-side entities actions (the shipped one does).

**Encrypted values come back as with ``Invoke``**, but only the ciphertexts this call issued
for this tenant (found in the payload sent and not in the one the buyer sent): a ciphertext of
another call stays text, even one of the same tenant that ``Invoke`` would open. The stage holds
back at most the longest of them (``broker/streaming/README.md``), and is left out of calls
that encrypted nothing.

**Retention as with ``Invoke``** (``broker.calls.retain``): a policy that asks to keep the call
on a broker without a root key is refused before anything is sent (FAILED_PRECONDITION). Kept
are the request as the buyer sent it and, for the answer, what the buyer was actually sent: the
JSON array of the ``chat.completion.chunk`` objects delivered (``Invoke`` keeps the one answer
object it returns). They are written once the stream ends, before the outcome entry: after the
last chunk, or, when the stream breaks or the buyer leaves after the vendor was called, with
the chunks delivered so far (the outcome says ``partial``); the summary lists the record ids,
as ``Invoke``'s answer does. Unlike ``Invoke``, which keeps nothing of a call whose model
failed, a stream that reached the vendor keeps the request even if no chunk came back: it left
the broker. If the records cannot be written after a complete answer, the buyer gets that
error instead of the summary, and the outcome records it (status UNAVAILABLE, not partial).

What the answer side does not do for streams, on purpose and fail-closed:

- a field action other than ``allow`` on ``/choices/0/delta/content`` (or on the tool-call
  arguments) cannot be applied piece by piece: ``drop`` removes the text, anything else replaces
  the whole answer text with one redaction marker;
- field labels *inside* streamed tool-call arguments cannot apply (the arguments arrive as
  fragments of JSON text); their text goes through the same entity actions and restoration as
  content. Unary ``Invoke`` opens complete arguments (``broker.calls.chat``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from broker.audit.store import Receipt
from broker.audit.writer import AuditLog
from broker.auth.principal import Principal, Role, require_role
from broker.calls.audited import CallRecord
from broker.calls.chat import OpenedChat, close_tool_arguments, open_tool_arguments
from broker.calls.concurrency import TenantConcurrencyLimiter
from broker.calls.decide import labels_of, refuse_if_denied
from broker.calls.invoke import CallRequest, Enforcement, ModelResolver
from broker.calls.late_outcomes import LateOutcomes
from broker.calls.payload import JsonObject
from broker.calls.retain import refuse_unkeepable, retain_call, wants_retention
from broker.calls.stream_chunks import ChunkRewriter, entity_action
from broker.classify.classifier import Classification, FieldInfo
from broker.classify.detectors import TRUNCATED, DetectorSet, default_detector_set
from broker.enforce.enforcer import CallScope, Enforced, FieldDecision
from broker.enforce.keys import TenantKeys
from broker.enforce.restore import ciphertexts_in
from broker.errors import BrokerError, Cancelled, DeadlineExceeded, FailedPrecondition
from broker.logging import get_logger
from broker.metering.limits import Quotas
from broker.observability.metrics import count_actions
from broker.observability.stages import stage
from broker.policy import Plan
from broker.registry.model import ModelVersion, Runtime
from broker.registry.refs import ModelRef
from broker.retention.records import RetentionStore
from broker.runtimes.base import Canceller
from broker.runtimes.openai import ChatChunk, Usage
from broker.streaming import ciphertext_opener

_log = get_logger(__name__)

CONTENT_PATH = "/choices/0/delta/content"
CONTENT_SHAPE = "/choices/*/delta/content"


class ChunkStream(Protocol):
    """What the call path reads from a model's stream (``ChatStream``, ``SandboxChatStream``...)."""

    usage: Usage | None
    finish_reason: str | None

    def __iter__(self) -> Iterator[ChatChunk]: ...

    def __enter__(self) -> ChunkStream: ...

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None: ...


class StreamingRuntime(Protocol):
    """A runtime that streams chat answers (OpenAIRuntime, SandboxRuntime)."""

    def stream(
        self,
        model: ModelVersion,
        payload: dict[str, Any],
        *,
        timeout: float,
        call_id: str,
        on_cancel: Callable[[Canceller], None] | None = None,
        tenant: str,
    ) -> ChunkStream:
        """Start the model's stream; errors before its first chunk raise here."""
        ...


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """First event: the request side was decided and enforced; the vendor is about to be called."""

    call_id: str
    model: ModelVersion
    decisions: tuple[FieldDecision, ...]
    policy_revision: str


@dataclass(frozen=True, slots=True)
class StreamDelta:
    """One ``chat.completion.chunk`` object as the buyer may see it."""

    chunk: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StreamSummary:
    """Last event, sent after the audit outcome was written."""

    call_id: str
    model: ModelVersion
    policy_revision: str
    usage: Usage | None
    restored_values: int
    delta_chunks: int
    finish_reason: str
    receipt: Receipt
    intent_leaf_index: int
    entity_actions: Mapping[str, str]
    retained_record_ids: tuple[str, ...] = ()


StreamEvent = StreamOpened | StreamDelta | StreamSummary


_Keeper = Callable[[list[JsonObject]], tuple[str, ...]]
"""Retains the call with the given delivered chunks as its answer; the record ids."""


def _time_left(deadline: float) -> float:
    """Seconds until ``deadline``; DeadlineExceeded if none are left for the model."""
    timeout = deadline - time.monotonic()
    if timeout <= 0:
        raise DeadlineExceeded("the call's deadline expired before the model was called")
    return timeout


@dataclass
class _Progress:
    """What has happened so far, for retention and the outcome whatever way the stream ends."""

    record: CallRecord
    vendor_called: bool = False
    complete: bool = False
    recorded: bool = False
    delta_chunks: int = 0
    delivered: list[str] = field(default_factory=list)
    usage: Usage | None = None
    keeper: _Keeper | None = None
    answer_chunks: list[JsonObject] | None = None  # kept only when the answer is retained
    retained: tuple[str, ...] = ()
    kept: bool = False

    def deliver(self, texts: list[str], chunk: JsonObject) -> None:
        self.delta_chunks += 1
        self.delivered.extend(texts)
        if self.answer_chunks is not None:
            self.answer_chunks.append(chunk)

    def fail(self, error: BrokerError) -> None:
        """Write the outcome of a call that ended with ``error`` (once; later calls do nothing).

        After the vendor was called, what was delivered is retained first (if the policy says
        so); a retention failure then is logged, and the outcome keeps the first error.
        """
        if self.recorded:
            return
        self.recorded = True
        if not self.vendor_called:
            self.record.record_failure(error)
            return
        try:
            self._keep()
        except BrokerError as exc:
            _log.warning("stream_retention_failed", error=type(exc).__name__)
        self._outcome(error.code.name, type(error).__name__, partial=not self.complete)

    def succeed(self) -> Receipt:
        """Retain (if asked; its error propagates to ``fail``), then write the outcome."""
        self._keep()
        self.recorded = True
        return self._outcome("OK", "", partial=False)

    def _keep(self) -> None:
        if self.keeper is None or self.kept:
            return
        self.kept = True
        self.retained = self.keeper(self.answer_chunks or [])

    def _outcome(self, status: str, error_class: str, *, partial: bool) -> Receipt:
        return self.record.record_stream_outcome(
            status,
            "".join(self.delivered).encode(),
            error_class=error_class,
            usage=self.usage.as_audit() if self.usage else None,
            delta_chunks=self.delta_chunks,
            partial=partial,
            retained=self.retained,
        )


class Streamer:
    """Runs InvokeStream for authenticated buyers (thread-safe; one per server)."""

    def __init__(  # noqa: PLR0917 - the same collaborators as Invoker, plus the keys
        self,
        resolver: ModelResolver,
        runtimes: Mapping[Runtime, object],
        limiter: TenantConcurrencyLimiter,
        enforcement: Enforcement,
        keys: TenantKeys,
        audit: AuditLog,
        *,
        default_timeout: float,
        default_purpose: str = "default",
        detectors: DetectorSet | None = None,
        retention: RetentionStore | None = None,
        quotas: Quotas | None = None,
        late_outcomes: LateOutcomes | None = None,
    ) -> None:
        """``retention``: where kept calls go; None means this broker keeps nothing."""
        self._retention = retention
        self._quotas = quotas  # rate limits and budgets (broker.metering.limits); None: none
        self._late = late_outcomes  # outcomes the log refused, written once it can
        self._resolver = resolver
        self._runtimes = dict(runtimes)
        self._limiter = limiter
        self._enforcement = enforcement
        self._keys = keys
        self._audit = audit
        self._default_timeout = default_timeout
        self._default_purpose = default_purpose
        self._detectors = detectors or default_detector_set()
        self._labels = tuple(sorted(self._detectors.labels - {TRUNCATED}))

    def stream(
        self,
        principal: Principal,
        request: CallRequest,
        *,
        time_remaining: float | None,
        on_cancel: Callable[[Canceller], None] | None = None,
    ) -> Iterator[StreamEvent]:
        """The events of one streamed call; every way it ends is audited before it is seen.

        Closing the iterator early (the buyer went away) records the outcome CANCELLED with the
        chunks delivered so far; ``on_cancel`` receives the canceller of the vendor request.
        """
        require_role(principal, Role.BUYER)
        call_id = uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(call_id=call_id)
        progress = _Progress(
            CallRecord(self._audit, principal, call_id, request.model_ref, late=self._late)
        )
        try:
            yield from self._run(principal, request, progress, time_remaining, on_cancel)
        except BrokerError as exc:
            progress.fail(exc)
            raise
        except GeneratorExit:
            progress.fail(Cancelled("the caller went away during the stream"))
            raise

    def _run(
        self,
        principal: Principal,
        request: CallRequest,
        progress: _Progress,
        time_remaining: float | None,
        on_cancel: Callable[[Canceller], None] | None,
    ) -> Iterator[StreamEvent]:
        record = progress.record
        deadline = time.monotonic() + (
            self._default_timeout if time_remaining is None else time_remaining
        )
        with stage("resolve"):
            model = record.model = self._resolve(request.model_ref)
            runtime = self._runtime_for(model)
        self._admit(principal.tenant, model)
        parts, purpose = self._enforcement, request.purpose or self._default_purpose
        with self._limiter.slot(principal.tenant):
            with stage("classify"):
                chat = open_tool_arguments(request.payload)
                classification = parts.decider.classify_request(model, chat.payload, request.labels)
            with stage("decide"):
                plan = parts.decider.decide("request", principal, model, purpose, classification)
            structlog.contextvars.bind_contextvars(policy_revision=plan.revision)
            refuse_if_denied(plan, "request")
            refuse_unkeepable(plan, self._retention)
            scope = CallScope(
                principal.tenant, record.call_id, to_sandbox=model.runtime is Runtime.SANDBOX
            )
            with stage("enforce"):
                outgoing = parts.enforcer.apply(
                    chat.payload, classification, plan, scope, "request"
                )
                close_tool_arguments(outgoing.payload, chat.opened)
            count_actions("request", outgoing.decisions)
            answer_plan = self._answer_plan(principal, model, purpose, classification)
            # The vault rows commit with the intent, as for Invoke (broker.enforce.vault): one
            # commit before the vendor is called instead of two.
            tokens = parts.vault.seal(principal.tenant, record.call_id, outgoing.pending_tokens)
            timeout = _time_left(deadline)
            with stage("audit_intent"):
                record.record_intent(
                    plan.revision,
                    outgoing.decisions,
                    outgoing.payload,
                    companions=tokens.companion(),
                )
            yield StreamOpened(record.call_id, model, tuple(outgoing.decisions), plan.revision)
            if wants_retention(plan):
                self._plan_keeping(progress, principal, model, plan, request.payload)
            progress.vendor_called = True
            rewriter = self._rewriter(principal, record.call_id, answer_plan, chat, outgoing)
            vendor = runtime.stream(
                model, outgoing.payload, timeout=timeout, call_id=record.call_id,
                on_cancel=on_cancel, tenant=principal.tenant,
            )  # fmt: skip
            with vendor:
                try:
                    for chunk in vendor:
                        progress.usage = vendor.usage
                        out = rewriter.rewrite(chunk.data)
                        if out is not None:
                            progress.deliver(rewriter.take_delivered(), out)
                            yield StreamDelta(out)
                except BrokerError as exc:
                    progress.usage = vendor.usage
                    if hasattr(exc, "delivered_chunks"):  # the vendor broke: release what's held
                        yield from self._flush(rewriter, progress)
                    raise
                progress.usage = vendor.usage
            yield from self._flush(rewriter, progress)
            progress.complete = True
            receipt = progress.succeed()
        yield StreamSummary(
            call_id=record.call_id,
            model=model,
            policy_revision=plan.revision,
            usage=progress.usage,
            restored_values=rewriter.restored,
            delta_chunks=progress.delta_chunks,
            finish_reason=vendor.finish_reason or "",
            receipt=receipt,
            intent_leaf_index=record.intent.leaf_index if record.intent else -1,
            entity_actions={
                label: answer_plan.entities.get(label, answer_plan.default_action).kind
                for label in self._labels
            },
            retained_record_ids=progress.retained,
        )

    def _rewriter(
        self,
        principal: Principal,
        call_id: str,
        answer_plan: Plan,
        chat: OpenedChat,
        outgoing: Enforced,
    ) -> ChunkRewriter:
        """The answer's pipeline: detectors, the answer plan's action, restoration."""
        issued = _issued_ciphertexts(chat.payload, outgoing)
        return ChunkRewriter(
            self._detectors,
            entity_action(answer_plan, self._keys, principal.tenant),
            self._enforcement.vault,
            principal.tenant,
            call_id,
            field_action=answer_plan.fields.get(CONTENT_PATH, answer_plan.default_action).kind,
            ciphertexts=issued,
            opener=ciphertext_opener(self._keys, principal.tenant) if issued else None,
        )

    @staticmethod
    def _flush(rewriter: ChunkRewriter, progress: _Progress) -> Iterator[StreamEvent]:
        tail = rewriter.flush()
        if tail is not None:
            progress.deliver(rewriter.take_delivered(), tail)
            yield StreamDelta(tail)

    def _plan_keeping(
        self,
        progress: _Progress,
        principal: Principal,
        model: ModelVersion,
        plan: Plan,
        request: JsonObject,
    ) -> None:
        """Get ready to retain: collect delivered chunks if the answer is kept."""
        store, call_id = self._retention, progress.record.call_id

        def keep(answer: list[JsonObject]) -> tuple[str, ...]:
            return retain_call(
                store,
                plan,
                principal=principal,
                model=model,
                call_id=call_id,
                request=request,
                answer=answer,
            )

        progress.keeper = keep
        if plan.retention.response_ttl_s:
            progress.answer_chunks = []

    def _answer_plan(
        self,
        principal: Principal,
        model: ModelVersion,
        purpose: str,
        request_classification: Classification,
    ) -> Plan:
        """The answer-side plan, decided once for every label the detectors can report."""
        labels = frozenset(self._labels)
        answer = Classification(
            [FieldInfo(CONTENT_PATH, CONTENT_SHAPE, "string", labels, ())],
            {label: [CONTENT_PATH] for label in self._labels},
        )
        plan = self._enforcement.decider.decide(
            "response",
            principal,
            model,
            purpose,
            answer,
            request_labels=labels_of(request_classification),
        )
        refuse_if_denied(plan, "response")
        return plan

    def _resolve(self, model_ref: str) -> ModelVersion:
        model = self._resolver.resolve(ModelRef.parse(model_ref, field="model"), callable_only=True)
        structlog.contextvars.bind_contextvars(model=model.ref, vendor=model.vendor)
        return model

    def _admit(self, tenant: str, model: ModelVersion) -> None:
        """The tenant's rate limits and budgets (QuotaExceeded), if it has any."""
        if self._quotas:  # falsy without rules: a call with no quota pays no query
            with stage("quota"):
                self._quotas.admit(tenant, model)

    def _runtime_for(self, model: ModelVersion) -> StreamingRuntime:
        runtime = self._runtimes.get(model.runtime)
        if runtime is None or not hasattr(runtime, "stream"):
            raise FailedPrecondition(
                f"model {model.ref} uses the {model.runtime.value} runtime, which does not "
                "stream answers: call it with Invoke"
            )
        streaming: StreamingRuntime = runtime
        return streaming


def _issued_ciphertexts(received: JsonObject, sent: Enforced) -> frozenset[str]:
    """The ciphertexts this call's ``encrypt`` actions put into what was sent (often none)."""
    encrypted = any(
        decision.action == "encrypt"
        or any(entity.action == "encrypt" for entity in decision.entities)
        for decision in sent.decisions
    )
    if not encrypted:
        return frozenset()
    return frozenset(ciphertexts_in(sent.payload) - ciphertexts_in(received))

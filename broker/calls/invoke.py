"""One Invoke, end to end: bound the payload, resolve the model, dispatch, answer.

This is the call path the servicer delegates to. Later stages (classification, policy,
enforcement, audit, retention) slot in between resolve and dispatch and again on the answer;
each is a separate module so that this file stays a readable list of steps.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from broker.auth.principal import Principal, Role, require_role
from broker.calls.concurrency import TenantConcurrencyLimiter
from broker.calls.payload import JsonObject
from broker.errors import DeadlineExceeded, FailedPrecondition
from broker.registry.model import ModelVersion, Runtime
from broker.registry.refs import ModelRef
from broker.runtimes.base import Runtime as RuntimeClient


class ModelResolver(Protocol):
    """What the call path needs from the registry."""

    def resolve(self, ref: ModelRef, *, callable_only: bool) -> ModelVersion:
        """Return the model version a reference names (NotFound, FailedPrecondition)."""
        ...


Canceller = Callable[[Callable[[], None]], None]


@dataclass(frozen=True, slots=True)
class InvokeResult:
    """What Invoke answers: the call id, the resolved model and the answer object."""

    call_id: str
    model: ModelVersion
    answer: JsonObject


class Invoker:
    """Runs Invoke calls for authenticated buyers."""

    def __init__(
        self,
        resolver: ModelResolver,
        runtimes: Mapping[Runtime, RuntimeClient],
        limiter: TenantConcurrencyLimiter,
        *,
        default_timeout: float,
    ) -> None:
        self._resolver = resolver
        self._runtimes = dict(runtimes)
        self._limiter = limiter
        self._default_timeout = default_timeout

    def invoke(
        self,
        principal: Principal,
        model_ref: str,
        payload: JsonObject,
        *,
        time_remaining: float | None,
        on_cancel: Canceller | None = None,
    ) -> InvokeResult:
        """Call ``model_ref`` with ``payload`` on behalf of ``principal``.

        ``time_remaining`` is the caller's deadline in seconds (None: no deadline, the configured
        default applies); it is passed on to the model so that the backend gives up when the
        caller does. ``on_cancel`` registers a function to run if the caller goes away.
        """
        require_role(principal, Role.BUYER)
        call_id = uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(call_id=call_id)
        deadline = time.monotonic() + (
            self._default_timeout if time_remaining is None else time_remaining
        )
        model = self._resolver.resolve(ModelRef.parse(model_ref, field="model"), callable_only=True)
        structlog.contextvars.bind_contextvars(model=model.ref, vendor=model.vendor)
        runtime = self._runtime_for(model)
        with self._limiter.slot(principal.tenant):
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise DeadlineExceeded("the call's deadline expired before the model was called")
            answer = runtime.invoke(
                model, payload, timeout=timeout, call_id=call_id, on_cancel=on_cancel
            )
        return InvokeResult(call_id=call_id, model=model, answer=answer)

    def _runtime_for(self, model: ModelVersion) -> RuntimeClient:
        runtime = self._runtimes.get(model.runtime)
        if runtime is None:
            raise FailedPrecondition(
                f"model {model.ref} uses the {model.runtime.value} runtime, "
                "which this broker does not serve yet"
            )
        return runtime


def describe(answer: Any) -> str:
    """A value-free description of an answer for logs: its type and size only."""
    if isinstance(answer, dict):
        return f"object with {len(answer)} keys"
    return type(answer).__name__

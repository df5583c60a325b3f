"""The seam between a call and the place a model runs.

The call path (``broker/calls``) hands an enforced payload to a ``Runtime`` and gets an answer
back; it neither knows nor cares whether the model is a remote Open Inference Protocol server,
an OpenAI-compatible endpoint or a sandboxed worker. Tests substitute a fake that records calls.

Contract every runtime keeps:

- ``timeout`` is the caller's *remaining* deadline in seconds; the runtime never waits longer,
  and raises ``DeadlineExceeded`` when it runs out.
- A runtime does not retry: inference is not idempotent (a model may bill, log or act), so a
  second attempt is the buyer's decision, not ours.
- ``on_cancel``, when given, is called once with a canceller before the runtime starts waiting.
  The gRPC server calls that canceller if the buyer goes away, and the runtime then abandons the
  outbound work. If the buyer is already gone when ``on_cancel`` is called, the server should
  call the canceller at once.
- ``tenant`` is the buyer the call is made for. Remote runtimes only log it; the sandbox
  runtime keys its worker pools by it, so a worker never serves two tenants.
- Errors are ``broker.errors.BrokerError`` subclasses whose messages never contain payload or
  answer values; ``call_id`` is for logs and for correlation with the backend only.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Protocol

from broker.registry.model import ModelVersion

#: CPU microseconds the broker's sandbox spent on the current call (issue 17: billed per CPU
#: second). The call path sets it to 0 when a call starts; the sandbox pool adds each worker
#: lease's CPU time when the lease ends, in the calling thread (streams are iterated there too).
#: Remote runtimes leave it at 0: their CPU is the vendor's business.
call_cpu_us: ContextVar[int] = ContextVar("call_cpu_us", default=0)

Canceller = Callable[[], None]
"""Abandons one call in flight; safe to call more than once, and after the call has ended."""


class Runtime(Protocol):
    """Runs one model invocation; implementations are thread-safe and shared by all calls."""

    def invoke(
        self,
        model: ModelVersion,
        payload: dict[str, Any],
        *,
        timeout: float,
        call_id: str,
        on_cancel: Callable[[Canceller], None] | None = None,
        tenant: str,
    ) -> dict[str, Any]:
        """Send ``payload`` to ``model`` and return its answer as a JSON object."""
        ...

    def close(self) -> None:
        """Release pooled connections and workers; later calls fail with ``Unavailable``."""
        ...

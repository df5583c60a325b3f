"""What can go wrong with a sandboxed worker, as members of the broker's error tree.

Each error subclasses the ``broker.errors`` class whose gRPC status fits, so the server's one
error interceptor maps them without knowing about sandboxes::

    SandboxError (mixin)
    ├── SandboxUnavailable      FAILED_PRECONDITION  the kernel refuses the sandbox: never run bare
    ├── SandboxLimitExceeded    RESOURCE_EXHAUSTED   memory, cpu, frame, ...; names the limit
    ├── SandboxTimeout          DEADLINE_EXCEEDED    the caller's deadline; the worker was killed
    ├── SandboxUnconfined       UNAVAILABLE          the worker's cgroup vanished; it was stopped
    ├── SandboxModelError       UNKNOWN              the package's callable raised
    └── SandboxCrashed          UNKNOWN              the worker died; details in ``log_reason``
        └── SandboxViolation    UNKNOWN              killed by the seccomp filter
"""

from __future__ import annotations

from broker.errors import (
    BackendError,
    DeadlineExceeded,
    FailedPrecondition,
    ResourceExhausted,
    Unavailable,
)


class SandboxError(Exception):
    """Marker base of every sandbox error, for callers that handle them together."""


class SandboxUnavailable(SandboxError, FailedPrecondition):
    """This host cannot build the sandbox; the broker must refuse sandbox runtimes."""

    def __init__(self, missing: list[str]) -> None:
        super().__init__(
            "the sandbox is unavailable on this host: " + "; ".join(missing),
            log_reason="; ".join(missing),
        )
        self.missing = missing


class SandboxLimitExceeded(SandboxError, ResourceExhausted):
    """The worker hit one of its limits; ``limit`` is its name (``memory``, ``cpu``, ``frame``)."""

    def __init__(self, limit: str) -> None:
        super().__init__(f"the model exceeded its {limit} limit")
        self.limit = limit


class SandboxUnconfined(SandboxError, Unavailable):
    """The worker's cgroup was removed, or its processes moved out of it, under the broker:
    its limits no longer hold, so it is stopped and its answer, if any, withheld. A retry
    starts a fresh worker in a new cgroup."""

    def __init__(self) -> None:
        super().__init__(
            "the model's worker lost its cgroup (its resource limits) and was stopped; retry"
        )


class SandboxTimeout(SandboxError, DeadlineExceeded):
    """The call outlived its deadline; the worker was killed because it may still be running."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"the model did not answer within {timeout:.3g} s")


class SandboxModelError(SandboxError, BackendError):
    """The package's callable raised; the worker stays usable. Details go to the log only."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"the model failed ({kind})", log_reason=detail)
        self.kind = kind


class SandboxCrashed(SandboxError, BackendError):
    """The worker died or broke the protocol; ``exit_code`` is its reaper's, when known."""

    def __init__(self, reason: str, exit_code: int | None = None) -> None:
        super().__init__("the model's worker crashed", log_reason=reason)
        self.reason = reason
        self.exit_code = exit_code


class SandboxViolation(SandboxCrashed):
    """The seccomp filter killed the worker for a forbidden call: worth an audit entry."""

"""One error tree for the broker, and one table from it to gRPC status codes.

Code below the gRPC boundary raises these (``raise ... from exc`` when wrapping a lower error);
the server's error interceptor turns them into a status with a message a caller can act on.
Messages never contain payload values, tokens or secrets: they name the limit, the field path or
the model reference, and nothing the caller sent as data.

    BrokerError
    ├── InvalidArgument        INVALID_ARGUMENT     malformed, too large, too deep, bad reference
    ├── Unauthenticated        UNAUTHENTICATED      one generic message; the reason goes to the log
    ├── PermissionDenied       PERMISSION_DENIED    wrong role, another vendor's model, policy deny
    ├── NotFound               NOT_FOUND            unknown model (or one the caller may not see)
    ├── AlreadyExists          ALREADY_EXISTS       duplicate registration
    ├── FailedPrecondition     FAILED_PRECONDITION  retired model, forbidden status change
    ├── ResourceExhausted      RESOURCE_EXHAUSTED   per-tenant concurrency, sandbox limits and uids
    │   └── QuotaExceeded                           a rate limit or monthly budget (QuotaFailure,
    │                                               RetryInfo details)
    ├── DeadlineExceeded       DEADLINE_EXCEEDED    the caller's deadline ran out downstream
    ├── Cancelled              CANCELLED            the caller went away; downstream work stopped
    ├── Unavailable            UNAVAILABLE          backend or store down; safe to retry
    ├── BackendError           UNKNOWN              the model's server failed the call
    └── Internal               INTERNAL             a bug; details only in the log
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import grpc


class BrokerError(Exception):
    """Base of every error the broker reports to a caller.

    ``message`` is what the caller sees; ``log_reason`` (optional) is extra detail that goes to
    the structured log only, for errors whose precise cause must not reach the caller.
    ``details`` (optional) travel to the caller in a ``google.rpc.ErrorInfo`` status detail, for
    machine-readable reasons such as a policy's deny reasons; they must hold no payload values.
    """

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        log_reason: str | None = None,
        details: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.log_reason = log_reason
        self.details: Mapping[str, str] = details or {}


class InvalidArgument(BrokerError):
    """The request is malformed or exceeds a limit; the message names what to fix."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class Unauthenticated(BrokerError):
    """The caller's credentials are missing or invalid.

    The message the caller sees is always the same; the precise reason is ``log_reason``.
    """

    code = grpc.StatusCode.UNAUTHENTICATED
    PUBLIC_MESSAGE: ClassVar[str] = "authentication failed: send a valid bearer token"

    def __init__(self, reason: str) -> None:
        super().__init__(self.PUBLIC_MESSAGE, log_reason=reason)


class PermissionDenied(BrokerError):
    """The caller is authenticated but may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(BrokerError):
    """The named thing does not exist, or the caller may not know that it exists."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(BrokerError):
    """The thing to create exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(BrokerError):
    """The system is not in a state that allows this request (for example a retired model)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(BrokerError):
    """A quota or concurrency limit was hit; retry later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class QuotaExceeded(ResourceExhausted):
    """A tenant's rate limit or monthly budget is used up; the caller may retry later.

    ``subject`` names what is limited (``tenant:acme`` or ``tenant:acme/model:vendor/name``)
    and ``retry_after`` says in how many seconds a retry can succeed: the gRPC boundary sends
    them as ``google.rpc.QuotaFailure`` and ``google.rpc.RetryInfo`` details, so a client can
    back off by machine, while the message says the same for people.
    """

    def __init__(self, message: str, *, subject: str, retry_after: float) -> None:
        super().__init__(message)
        self.subject = subject
        self.retry_after = max(retry_after, 0.0)


class DeadlineExceeded(BrokerError):
    """The caller's deadline expired before the work finished."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(BrokerError):
    """The caller cancelled the call (or disconnected); the work downstream was stopped too."""

    code = grpc.StatusCode.CANCELLED


class Unavailable(BrokerError):
    """A dependency (model backend, store) is unreachable; nothing was done, retrying is safe."""

    code = grpc.StatusCode.UNAVAILABLE


class BackendError(BrokerError):
    """The model's own server failed the call: the vendor's fault, not the caller's or ours."""

    code = grpc.StatusCode.UNKNOWN


class Internal(BrokerError):
    """A fault inside the broker. The caller sees a generic message; the log has the cause."""

    code = grpc.StatusCode.INTERNAL

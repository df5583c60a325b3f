"""The one place where a vendor's HTTP statuses and httpx's errors become broker errors.

Messages name the model reference and the HTTP status, never the vendor's response body (it may
echo the prompt) nor the API key. The table:

    200..299                                  success
    401, 403   (the vendor refused *our* key) -> BackendError      an operator must fix the key
    408        (the vendor timed out reading) -> Unavailable       nothing was generated
    429        (rate limit, quota)            -> ResourceExhausted back off; Retry-After kept
    500..599   (vendor down or failing)       -> Unavailable       safe to retry later
    other 4xx, 1xx, 3xx (no redirects followed) -> BackendError    "rejected the call (HTTP n)"
    connect refused / DNS / TLS handshake      -> Unavailable
    no connection within connect_timeout       -> Unavailable (DeadlineExceeded if the caller's
                                                  deadline was the shorter limit)
    read / write / pool timeout                -> DeadlineExceeded
    connection dropped mid-answer              -> Unavailable (StreamInterrupted for streams)
    answer over max_answer_bytes, bad JSON     -> BackendError
    endpoint URL unusable                      -> FailedPrecondition (a registry problem)

Why 401/403 is a ``BackendError`` and not ``Unavailable`` or an auth status: the key is the
broker's (a vendor key in the keyring), not the buyer's, so UNAUTHENTICATED or PERMISSION_DENIED
would tell the buyer that *its* credentials are wrong; and UNAVAILABLE invites automatic, immediate
retries that cannot succeed until an operator rotates the key. UNKNOWN (``BackendError``) says
"the vendor failed this call" and the log says exactly why, at error level.
"""

from __future__ import annotations

import httpx

from broker.errors import (
    BackendError,
    BrokerError,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    ResourceExhausted,
    Unavailable,
)
from broker.runtimes.openai.transport import AbortReason


def error_for_status(ref: str, response: httpx.Response) -> BrokerError:
    """The broker error for a non-2xx answer (the body is not read: it may echo the prompt)."""
    status = response.status_code
    if status in (401, 403):
        return BackendError(
            f"model backend {ref} refused the broker's credentials (HTTP {status})",
            log_reason="the vendor API key for this model is missing, wrong or revoked",
        )
    if status == 408:
        return Unavailable(f"model backend {ref} timed out receiving the call (HTTP 408)")
    if status == 429:
        retry_after = response.headers.get("retry-after", "")
        details = {"retry_after": retry_after} if retry_after.isdigit() else None
        return ResourceExhausted(
            f"model backend {ref} is rate limiting or over quota (HTTP 429); retry later",
            details=details,
        )
    if 500 <= status <= 599:
        return Unavailable(f"model backend {ref} failed or is unavailable (HTTP {status})")
    return BackendError(f"model backend {ref} rejected the call (HTTP {status})")


def error_for_abort(ref: str, reason: AbortReason) -> BrokerError:
    """The error for a call that the broker itself abandoned."""
    if reason is AbortReason.CANCELLED:
        return Cancelled(f"call to model {ref} was cancelled: the caller went away")
    return DeadlineExceeded(f"model {ref} did not answer within the caller's deadline")


def error_for_transport(  # noqa: PLR0911 - one return per row of the table above
    ref: str, exc: httpx.HTTPError, *, connect_limited_by_deadline: bool
) -> BrokerError:
    """The error for an httpx failure that the broker did not cause itself."""
    if isinstance(exc, httpx.ConnectTimeout):
        if connect_limited_by_deadline:
            return DeadlineExceeded(f"model {ref} did not answer within the caller's deadline")
        return Unavailable(f"model backend {ref} did not accept a connection in time")
    if isinstance(exc, httpx.TimeoutException):
        return DeadlineExceeded(f"model {ref} did not answer within the caller's deadline")
    if isinstance(exc, httpx.ConnectError):
        return Unavailable(f"model backend {ref} is unreachable")
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        return FailedPrecondition(f"model {ref} has an endpoint URL the broker cannot call")
    if isinstance(exc, httpx.DecodingError):
        return BackendError(f"model backend {ref} sent an answer that cannot be decoded")
    return Unavailable(f"model backend {ref} dropped the connection")

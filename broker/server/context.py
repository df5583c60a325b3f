"""The authenticated principal of the RPC being served.

The auth interceptor sets it before the servicer method runs, in the same worker thread, and
resets it afterwards; servicers read it with ``current_principal()``.
"""

from __future__ import annotations

from contextvars import ContextVar

from broker.auth.principal import Principal
from broker.errors import Internal

_principal: ContextVar[Principal | None] = ContextVar("broker_principal", default=None)


def current_principal() -> Principal:
    """The principal of the RPC in progress; Internal if called outside an authenticated RPC."""
    principal = _principal.get()
    if principal is None:
        raise Internal("no authenticated principal in this context")
    return principal


def principal_var() -> ContextVar[Principal | None]:
    """The context variable itself, for the interceptor that sets and resets it."""
    return _principal

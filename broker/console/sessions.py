"""Server-side console sessions: the browser holds only a random id, never the token.

:class:`SessionStore` keeps sessions in this process's memory (a restart signs everyone out);
``broker console`` uses :class:`~broker.console.stored_sessions.StoredSessionStore`, which keeps
them in the database so they survive restarts and serve several console processes. Both
have the :class:`Sessions` surface. A session ends ``session_minutes`` after sign-in or when
the token expires, whichever is first; there is no sliding renewal, since the token it carries
cannot be renewed either. Each session has its own CSRF token, checked on every POST with a
constant-time compare.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from broker.auth.principal import Principal

MAX_SESSIONS: Final = 10_000


@dataclass(frozen=True, slots=True)
class Session:
    """One signed-in officer: the token the console calls the broker with, and its principal."""

    session_id: str
    token: str
    principal: Principal
    csrf_token: str
    expires_at: float

    def csrf_ok(self, presented: str | None) -> bool:
        """True if ``presented`` is this session's CSRF token (constant-time)."""
        return presented is not None and hmac.compare_digest(presented, self.csrf_token)


class Sessions(Protocol):
    """What the console needs of a session store."""

    clock: Callable[[], float]

    def create(self, token: str, principal: Principal) -> Session: ...

    def get(self, session_id: str | None) -> Session | None: ...

    def delete(self, session_id: str | None) -> None: ...


class SessionStore:
    """Sessions by id, bounded (oldest evicted), thread-safe; ``clock`` is injectable."""

    def __init__(self, ttl_seconds: float, *, clock: Callable[[], float] = time.time) -> None:
        self._ttl = ttl_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def create(self, token: str, principal: Principal) -> Session:
        """A new session for a verified token; it ends at the earlier of TTL and token expiry."""
        session = Session(
            session_id=secrets.token_urlsafe(32),
            token=token,
            principal=principal,
            csrf_token=secrets.token_urlsafe(32),
            expires_at=min(self.clock() + self._ttl, principal.expires_at),
        )
        with self._lock:
            self._sessions[session.session_id] = session
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, or None (an expired one is dropped on the way)."""
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if session.expires_at <= self.clock():
                del self._sessions[session_id]
                return None
            return session

    def delete(self, session_id: str | None) -> None:
        """End a session (sign-out, or the broker refused its token)."""
        if session_id:
            with self._lock:
                self._sessions.pop(session_id, None)

"""A bounded, thread-safe cache of verified tokens, so a busy caller is verified once.

Verifying a signature costs tens of microseconds (RSA) to a millisecond (RSA 4096 on a slow
core); a buyer service sends the same token on every call until it expires. Entries are keyed by
the token's SHA-256 digest, not the token, so a heap dump of the cache holds no bearer
credentials, and an entry is served only while the token would still pass the time checks.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from broker.auth.principal import Principal


class PrincipalCache:
    """A thread-safe LRU of verified tokens, keyed by the token's SHA-256 digest.

    The digest, not the token, is the key so that a heap dump of the cache does not hold
    bearer credentials. An entry is served only while it would still pass the time checks.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, tuple[Principal, float | None]] = OrderedDict()

    def get(self, digest: bytes, now: float, leeway: float) -> Principal | None:
        """The cached principal if it is still valid at ``now``; drops it otherwise."""
        if self._size == 0:
            return None
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            principal, not_before = entry
            if principal.expires_at <= now - leeway:
                del self._entries[digest]
                return None
            if not_before is not None and not_before > now + leeway:
                return None
            self._entries.move_to_end(digest)
            return principal

    def put(self, digest: bytes, principal: Principal, not_before: float | None) -> None:
        """Remember a verified principal, evicting the least recently used beyond the bound."""
        if self._size == 0:
            return
        with self._lock:
            self._entries[digest] = (principal, not_before)
            self._entries.move_to_end(digest)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

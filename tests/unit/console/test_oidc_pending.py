"""Pending OIDC sign-ins: taken once, and only while fresh (time is injected)."""

from __future__ import annotations

from broker.console.oidc import PENDING_SECONDS, PendingLogin, PendingLogins


def _pending(at: float) -> PendingLogin:
    return PendingLogin(0, "state", "nonce", "verifier", "http://c/login/callback", at)


def test_a_pending_sign_in_can_be_taken_only_once() -> None:
    store = PendingLogins(clock=lambda: 100.0)
    login_id = store.put(_pending(100.0))
    assert store.take(login_id) == _pending(100.0)
    assert store.take(login_id) is None


def test_a_stale_pending_sign_in_is_not_returned() -> None:
    now = [100.0]
    store = PendingLogins(clock=lambda: now[0])
    login_id = store.put(_pending(100.0))
    now[0] += PENDING_SECONDS
    assert store.take(login_id) is None


def test_unknown_or_missing_ids_find_nothing() -> None:
    store = PendingLogins()
    store.put(_pending(0.0))
    assert store.take(None) is None
    assert store.take("") is None
    assert store.take("not-an-id") is None

"""Started OIDC sign-ins in the database (SQLite and PostgreSQL): sealed, taken once, fresh."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from broker.console.oidc import PENDING_SECONDS, PendingLogin
from broker.console.stored_logins import StoredPendingLogins, console_oidc_logins
from broker.storage.db import create_engine_for, migrate

NOW = 1_800_000_000.0
PENDING = PendingLogin(
    0, "state-0123456789", "nonce-0123456789", "verifier-0123456789", "https://c/cb", NOW
)


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = create_engine_for(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


def _stored(engine: sa.Engine) -> bytes:
    with engine.connect() as conn:
        return b"".join(
            bytes(r.id_hash) + bytes(r.sealed) for r in conn.execute(sa.select(console_oidc_logins))
        )


def test_a_sign_in_is_found_by_any_store_once(engine: sa.Engine) -> None:
    login_id = StoredPendingLogins(engine, clock=lambda: NOW).put(PENDING)
    other = StoredPendingLogins(engine, clock=lambda: NOW + 5)
    assert other.take(login_id) == PENDING
    assert other.take(login_id) is None
    assert StoredPendingLogins(engine, clock=lambda: NOW).take(login_id) is None


def test_the_row_holds_no_state_nonce_verifier_or_id(engine: sa.Engine) -> None:
    login_id = StoredPendingLogins(engine, clock=lambda: NOW).put(PENDING)
    stored = _stored(engine)
    for secret in (login_id, PENDING.state, PENDING.nonce, PENDING.code_verifier):
        assert secret.encode() not in stored


def test_stale_forged_and_tampered_sign_ins_are_refused(engine: sa.Engine) -> None:
    now = [NOW]
    store = StoredPendingLogins(engine, clock=lambda: now[0])
    stale_id = store.put(PENDING)
    now[0] += PENDING_SECONDS
    assert store.take(stale_id) is None
    for bad in (None, "", "x" * 43, "é", "a" * 500):
        assert store.take(bad) is None
    fresh = dataclasses.replace(PENDING, started_at=now[0])
    tampered_id = store.put(fresh)
    with engine.begin() as conn:
        conn.execute(sa.update(console_oidc_logins).values(sealed=b"\x01" * 80))
    assert store.take(tampered_id) is None
    # Starting a sign-in purges the stale ones.
    store.put(fresh)
    now[0] += PENDING_SECONDS
    store.put(dataclasses.replace(PENDING, started_at=now[0]))
    with engine.connect() as conn:
        assert (
            conn.execute(sa.select(sa.func.count()).select_from(console_oidc_logins)).scalar_one()
            == 1
        )

"""Console sessions in the database (SQLite and PostgreSQL): shared, revocable, sealed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from broker.auth.tokens import TokenVerifier
from broker.config import AuthConfig, DevIssuerConfig
from broker.console.stored_sessions import StoredSessionStore, console_sessions
from broker.storage.db import create_engine_for, migrate

NOW = 1_800_000_000.0


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = create_engine_for(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def verifier(tmp_path: Path) -> TokenVerifier:
    config = AuthConfig(dev_issuer=DevIssuerConfig(enabled=True))
    return TokenVerifier(config, data_dir=tmp_path / "keys", clock=lambda: NOW)


def _token(verifier: TokenVerifier, ttl: int = 3600) -> str:
    assert verifier.dev_issuer is not None
    return verifier.dev_issuer.mint("olga", "acme", ["compliance"], ttl_seconds=ttl, now=NOW)


def _rows(engine: sa.Engine) -> list[sa.Row[tuple[bytes, bytes, float, float]]]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(console_sessions)))


def test_a_session_is_shared_by_every_store_over_the_database(
    engine: sa.Engine, verifier: TokenVerifier
) -> None:
    first = StoredSessionStore(engine, verifier, 1800, clock=lambda: NOW)
    token = _token(verifier)
    session = first.create(token, verifier.verify(token))
    # Another console process (or this one after a restart) finds it by the cookie's id.
    second = StoredSessionStore(engine, verifier, 1800, clock=lambda: NOW)
    found = second.get(session.session_id)
    assert found is not None
    assert (found.token, found.principal.subject, found.principal.tenant) == (
        token,
        "olga",
        "acme",
    )
    assert found.csrf_token == session.csrf_token and found.csrf_ok(session.csrf_token)
    assert found.expires_at == NOW + 1800
    # Sign-out in one process ends it in all.
    second.delete(session.session_id)
    assert first.get(session.session_id) is None
    assert _rows(engine) == []


def test_the_row_holds_neither_the_id_nor_the_token(
    engine: sa.Engine, verifier: TokenVerifier
) -> None:
    store = StoredSessionStore(engine, verifier, 1800, clock=lambda: NOW)
    token = _token(verifier)
    session = store.create(token, verifier.verify(token))
    (row,) = _rows(engine)
    stored = b"".join(bytes(v) if isinstance(v, bytes | memoryview) else b"" for v in row)
    for secret in (token, session.session_id, session.csrf_token):
        assert secret.encode() not in stored
    assert token.split(".")[1].encode() not in stored  # not even the claims


def test_unknown_forged_or_tampered_ids_find_nothing(
    engine: sa.Engine, verifier: TokenVerifier
) -> None:
    store = StoredSessionStore(engine, verifier, 1800, clock=lambda: NOW)
    token = _token(verifier)
    session = store.create(token, verifier.verify(token))
    last = "B" if session.session_id.endswith("A") else "A"
    altered = session.session_id[:-1] + last
    for bad in (None, "", "x" * 43, altered, "é" * 10, "a" * 5000):
        assert store.get(bad) is None
    # A row whose sealed token was altered is refused, and removed.
    with engine.begin() as conn:
        conn.execute(sa.update(console_sessions).values(sealed_token=b"\x00" * 60))
    assert store.get(session.session_id) is None
    assert _rows(engine) == []


def test_a_session_ends_at_its_ttl_or_its_token_expiry(
    engine: sa.Engine, verifier: TokenVerifier
) -> None:
    now = [NOW]
    store = StoredSessionStore(engine, verifier, 1800, clock=lambda: now[0])
    long_token, short_token = _token(verifier), _token(verifier, ttl=600)
    long_session = store.create(long_token, verifier.verify(long_token))
    short_session = store.create(short_token, verifier.verify(short_token))
    assert short_session.expires_at == NOW + 600
    now[0] = NOW + 700
    assert store.get(short_session.session_id) is None
    assert store.get(long_session.session_id) is not None
    now[0] = NOW + 1800
    assert store.get(long_session.session_id) is None
    # Signing in purges what has expired, read or not.
    forgotten = _token(verifier, ttl=36000)
    store.create(forgotten, verifier.verify(forgotten, now=now[0]))  # ends at + 1800
    now[0] += 1800
    fresh = _token(verifier, ttl=72000)
    store.create(fresh, verifier.verify(fresh, now=now[0]))
    assert len(_rows(engine)) == 1

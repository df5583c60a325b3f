"""The token vault and restoration, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from broker.audit.store import AuditStore
from broker.enforce import transforms
from broker.enforce.keys import TenantKeys
from broker.enforce.restore import Restorer
from broker.enforce.vault import TOKEN_RE, PendingToken, TokenVault, new_token, vault_tokens
from broker.errors import Unavailable
from broker.storage.db import create_engine_for, migrate
from tests.unit.audit.conftest import make_intent

KEYS = TenantKeys(b"v" * 32)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = create_engine_for(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


def test_tokens_look_right_and_are_unique() -> None:
    tokens = {new_token() for _ in range(10_000)}
    assert len(tokens) == 10_000
    assert all(TOKEN_RE.fullmatch(t) for t in tokens)


def test_store_resolve_scope_tenant_and_expiry(engine: sa.Engine) -> None:
    clock = Clock()
    vault = TokenVault(engine, KEYS, ttl_seconds=60, clock=clock)
    token, other = new_token(), new_token()
    vault.store("bank", "call-1", [PendingToken(token, "Ada"), PendingToken(other, 42)])
    assert vault.resolve("bank", "call-1", [token, other, new_token()]) == {token: "Ada", other: 42}
    assert vault.resolve("bank", "call-2", [token]) == {}
    assert vault.resolve("mallory", "call-1", [token]) == {}
    with engine.connect() as conn:
        sealed = conn.execute(sa.select(vault_tokens.c.sealed)).scalars().all()
    assert all(b"Ada" not in blob for blob in sealed)
    clock.now += 61
    assert vault.resolve("bank", "call-1", [token]) == {}
    assert vault.purge_expired() == 2


def test_tampered_row_is_never_resolved(engine: sa.Engine) -> None:
    vault = TokenVault(engine, KEYS)
    token, victim = new_token(), new_token()
    vault.store("bank", "c", [PendingToken(token, "mine")])
    vault.store("mallory", "c", [PendingToken(victim, "x")])
    with engine.begin() as conn:
        stolen = conn.execute(
            sa.select(vault_tokens.c.sealed).where(vault_tokens.c.token == token)
        ).scalar_one()
        conn.execute(
            vault_tokens.update().where(vault_tokens.c.token == victim).values(sealed=stolen)
        )
    assert vault.resolve("mallory", "c", [victim]) == {}


def test_restorer_restores_whole_values_and_spans(engine: sa.Engine) -> None:
    vault = TokenVault(engine, KEYS)
    name, number = new_token(), new_token()
    vault.store("bank", "c1", [PendingToken(name, "Ada"), PendingToken(number, 7)])
    cipher = transforms.encrypt_value(KEYS.key("bank", "encrypt"), KEYS.key_id, "bank", "top")
    foreign = transforms.encrypt_value(KEYS.key("x", "encrypt"), KEYS.key_id, "x", "theirs")
    forged = new_token()
    answer = {
        "n": number,
        "text": f"Dear {name}, ref {forged}",
        "list": [cipher, foreign, f"say {cipher}"],
    }
    restored, count = Restorer(vault, KEYS).restore(answer, "bank", "c1")
    assert restored == {
        "n": 7,
        "text": f"Dear Ada, ref {forged}",
        "list": ["top", foreign, "say top"],
    }
    assert count == 4


def test_vault_down_is_unavailable(engine: sa.Engine) -> None:
    vault = TokenVault(engine, KEYS)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE vault_tokens"))
    with pytest.raises(Unavailable, match="vault"):
        vault.store("bank", "c", [PendingToken(new_token(), "x")])
    with pytest.raises(Unavailable, match="vault"):
        vault.resolve("bank", "c", [new_token()])


def test_sealed_tokens_written_with_an_audit_batch_resolve_alike(engine: sa.Engine) -> None:
    """The call path: seal, commit the rows with the intent, restore from what was sealed."""
    clock = Clock()
    vault = TokenVault(engine, KEYS, ttl_seconds=60, clock=clock)
    token, other = new_token(), new_token()
    sealed = vault.seal("bank", "call-1", [PendingToken(token, "Ada"), PendingToken(other, 42)])
    with engine.connect() as conn:  # sealing writes nothing
        assert conn.execute(sa.select(sa.func.count()).select_from(vault_tokens)).scalar() == 0
    AuditStore(engine).append([make_intent()], sealed.companion())
    with engine.connect() as conn:
        blobs = conn.execute(sa.select(vault_tokens.c.sealed)).scalars().all()
    assert len(blobs) == 2
    assert all(b"Ada" not in blob for blob in blobs)
    wanted = [token, other, new_token()]
    from_table = vault.resolve("bank", "call-1", wanted)
    assert from_table == {token: "Ada", other: 42}
    assert vault.resolve("bank", "call-1", wanted, issued=sealed) == from_table
    with pytest.raises(ValueError, match="another tenant or scope"):
        vault.resolve("mallory", "call-1", [token], issued=sealed)
    with pytest.raises(ValueError, match="another tenant or scope"):
        vault.resolve("bank", "call-2", [token], issued=sealed)
    clock.now += 60  # expired by the same clock, whichever way it is resolved
    assert vault.resolve("bank", "call-1", wanted) == {}
    assert vault.resolve("bank", "call-1", wanted, issued=sealed) == {}


def test_restorer_resolves_from_issued_tokens_without_the_table(engine: sa.Engine) -> None:
    vault = TokenVault(engine, KEYS)
    name = new_token()
    sealed = vault.seal("bank", "c1", [PendingToken(name, "Ada")])
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE vault_tokens"))  # proves the table is not read
    answer = {"text": f"Dear {name}, ref {new_token()}"}
    restored, count = Restorer(vault, KEYS).restore(answer, "bank", "c1", issued=sealed)
    assert restored["text"].startswith("Dear Ada, ref TKN-")
    assert count == 1
    assert vault.seal("bank", "c2", []).companion() == ()
    assert "Ada" not in repr(sealed)

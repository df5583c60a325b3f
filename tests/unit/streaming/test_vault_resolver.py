"""The streaming restorer on a real vault: only this tenant's and this call's tokens resolve."""

from __future__ import annotations

from pathlib import Path

from broker.enforce.keys import TenantKeys
from broker.enforce.vault import PendingToken, TokenVault, new_token
from broker.storage.db import create_engine_for, migrate
from broker.streaming import StreamingRestorer, vault_resolver

from .splits import random_splits


def test_split_tokens_restore_for_their_owner_only(tmp_path: Path) -> None:
    engine = create_engine_for(f"sqlite:///{tmp_path / 'vault.db'}")
    migrate(engine)
    try:
        vault = TokenVault(engine, TenantKeys(b"s" * 32))
        mine, card, other_call, other_tenant = (new_token() for _ in range(4))
        vault.store("acme", "call-1", [PendingToken(mine, "Ada"), PendingToken(card, 4242)])
        vault.store("acme", "call-2", [PendingToken(other_call, "Bob")])
        vault.store("evil", "call-1", [PendingToken(other_tenant, "Eve")])
        forged = "TKN-" + "A" * 20
        text = f"Hi {mine}, card {card}; {other_call} {other_tenant} {forged}."
        expected = f"Hi Ada, card 4242; {other_call} {other_tenant} {forged}."
        for chunks in random_splits(text, runs=20, seed=11, max_chunk=10):
            restorer = StreamingRestorer(vault_resolver(vault, "acme", "call-1"))
            out = "".join(restorer.feed(chunk) for chunk in chunks) + restorer.finish()
            assert out == expected
            assert restorer.restored == 2
    finally:
        engine.dispose()

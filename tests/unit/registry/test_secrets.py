"""Endpoint API keys: sealed at rest, and the opened key's cache follows the model's changes.

The cache must never serve a key the vendor has replaced or removed once the change is
committed and counted, nor a key read before a change and stored after it.
"""

from __future__ import annotations

import os

import pytest
import sqlalchemy as sa

from broker.enforce.keys import TenantKeys
from broker.errors import Unavailable
from broker.registry.generation import LocalChangeCounter, slot_of
from broker.registry.secrets import EndpointSecrets, endpoint_secrets
from tests.unit.registry.builders import oip_model

MODEL = oip_model(vendor="acme", name="chat", version="1.0.0")


class Clock:
    """Monotonic seconds that a test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def reads_of(engine: sa.Engine) -> list[str]:
    """Collects the statements that read ``endpoint_secrets`` (the cache's misses)."""
    seen: list[str] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _count(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("SELECT") and "endpoint_secrets" in statement:
            seen.append(statement)

    return seen


@pytest.fixture
def keys() -> TenantKeys:
    return TenantKeys(os.urandom(32))


def test_the_stored_key_is_sealed_and_opens_to_itself(engine: sa.Engine, keys: TenantKeys) -> None:
    secrets = EndpointSecrets(engine, keys)
    secrets.put(MODEL, "sk-canary-4b1d")
    with engine.connect() as conn:
        (sealed,) = conn.execute(sa.select(endpoint_secrets.c.sealed)).one()
    assert b"sk-canary-4b1d" not in bytes(sealed)
    assert secrets.lookup(MODEL) == "sk-canary-4b1d"


def test_without_a_ttl_every_lookup_reads_the_row(engine: sa.Engine, keys: TenantKeys) -> None:
    secrets = EndpointSecrets(engine, keys)
    secrets.put(MODEL, "sk-one")
    reads = reads_of(engine)
    for _ in range(3):
        assert secrets.lookup(MODEL) == "sk-one"
    assert len(reads) == 3


def test_a_cached_key_is_read_once_within_its_ttl(engine: sa.Engine, keys: TenantKeys) -> None:
    clock = Clock()
    secrets = EndpointSecrets(engine, keys, ttl_seconds=2.0, clock=clock)
    secrets.put(MODEL, "sk-one")
    reads = reads_of(engine)
    assert [secrets.lookup(MODEL) for _ in range(3)] == ["sk-one"] * 3
    assert len(reads) == 1
    clock.now += 2.0  # expired: read again
    assert secrets.lookup(MODEL) == "sk-one"
    assert len(reads) == 2


def test_a_rotation_elsewhere_is_seen_once_the_counter_moves(
    engine: sa.Engine, keys: TenantKeys
) -> None:
    """Two processes of a node: one serves calls, the other takes the vendor's UpdateModel."""
    changes, clock = LocalChangeCounter(), Clock()
    serving = EndpointSecrets(engine, keys, ttl_seconds=60.0, changes=changes, clock=clock)
    updating = EndpointSecrets(engine, keys, ttl_seconds=60.0, changes=changes, clock=clock)
    updating.put(MODEL, "sk-old")
    assert serving.lookup(MODEL) == "sk-old"

    updating.put(MODEL, "sk-new")
    assert serving.lookup(MODEL) == "sk-old"  # not counted yet: within the TTL, as documented
    changes.bump(slot_of(MODEL.vendor, MODEL.name))  # what the registry's on_change does
    assert serving.lookup(MODEL) == "sk-new"

    updating.remove(MODEL)
    changes.bump(slot_of(MODEL.vendor, MODEL.name))
    assert serving.lookup(MODEL) is None


def test_this_process_forgets_at_once_what_it_changed(engine: sa.Engine, keys: TenantKeys) -> None:
    secrets = EndpointSecrets(engine, keys, ttl_seconds=60.0)
    secrets.put(MODEL, "sk-old")
    assert secrets.lookup(MODEL) == "sk-old"
    secrets.put(MODEL, "sk-new")
    assert secrets.lookup(MODEL) == "sk-new"
    secrets.remove(MODEL)
    assert secrets.lookup(MODEL) is None


def test_a_key_read_before_a_change_is_not_served_after_it(
    engine: sa.Engine, keys: TenantKeys
) -> None:
    """The lookup that raced the change stores its answer under the count it saw first."""
    changes = LocalChangeCounter()
    secrets = EndpointSecrets(engine, keys, ttl_seconds=60.0, changes=changes)
    secrets.put(MODEL, "sk-old")
    slot, raced = slot_of(MODEL.vendor, MODEL.name), []

    @sa.event.listens_for(engine, "after_cursor_execute")
    def _change_meanwhile(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        if (
            not raced
            and "endpoint_secrets" in statement
            and statement.lstrip().startswith("SELECT")
        ):
            raced.append(statement)
            changes.bump(slot)  # the rotation commits while the old row is in hand

    assert secrets.lookup(MODEL) == "sk-old"
    reads = reads_of(engine)
    assert secrets.lookup(MODEL) == "sk-old"  # the row is unchanged, but it was read again
    assert len(reads) == 1


def test_an_unreadable_key_fails_the_call_and_is_not_cached(
    engine: sa.Engine, keys: TenantKeys
) -> None:
    EndpointSecrets(engine, TenantKeys(os.urandom(32))).put(MODEL, "sk-other-master")
    secrets = EndpointSecrets(engine, keys, ttl_seconds=60.0)
    for _ in range(2):
        with pytest.raises(Unavailable, match="cannot be opened") as raised:
            secrets.lookup(MODEL)
        assert "sk-other-master" not in str(raised.value)


def test_clear_forgets_every_opened_key(engine: sa.Engine, keys: TenantKeys) -> None:
    """What a replica does when its change feed had a gap (notices may have been lost)."""
    secrets = EndpointSecrets(engine, keys, ttl_seconds=60.0)
    secrets.put(MODEL, "sk-one")
    assert secrets.lookup(MODEL) == "sk-one"
    reads = reads_of(engine)
    secrets.clear()
    assert secrets.lookup(MODEL) == "sk-one"
    assert len(reads) == 1

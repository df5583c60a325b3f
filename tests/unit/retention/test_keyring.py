"""Keyring: root key checks, tenant key versions, rotation, re-wrapping, corruption."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from broker.errors import NotFound
from broker.retention.keyring import (
    Keyring,
    KeyringCorrupt,
    LocalKeyWrapper,
    RootKeyError,
)
from broker.retention.records import RetentionStore
from broker.retention.tables import retention_keyring, retention_tenant_keys
from tests.unit.retention.conftest import NOW, ROOT_KEY, count


def _snapshot(engine: sa.Engine) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(retention_tenant_keys)).all()
        check = conn.execute(sa.select(retention_keyring)).all()
    return sorted(tuple(r) for r in rows) + [tuple(r) for r in check]


def test_wrong_root_key_refuses_to_open_and_changes_nothing(
    engine: sa.Engine, store: RetentionStore
) -> None:
    store.retain(
        tenant="acme", subject="s", call_id="c1", model="m", request=b"x", request_ttl_s=60
    )
    before = _snapshot(engine)
    with pytest.raises(RootKeyError, match="is not the one that wrapped"):
        Keyring.open(engine, LocalKeyWrapper(b"\x01" * 32))
    assert _snapshot(engine) == before


def test_same_root_key_reopens_and_reads_old_records(
    engine: sa.Engine, store: RetentionStore
) -> None:
    (info,) = store.retain(
        tenant="acme", subject="s", call_id="c1", model="m", request=b"hello", request_ttl_s=60
    )
    again = RetentionStore(
        engine, Keyring.open(engine, LocalKeyWrapper(ROOT_KEY)), clock=lambda: NOW
    )
    assert again.get(info.record_id, tenant="acme").payload == b"hello"


def test_tenant_keys_without_check_value_refuse_to_open(
    engine: sa.Engine, store: RetentionStore
) -> None:
    store.retain(
        tenant="acme", subject="s", call_id="c1", model="m", request=b"x", request_ttl_s=60
    )
    with engine.begin() as conn:
        conn.execute(sa.delete(retention_keyring))
    with pytest.raises(RootKeyError, match="no keyring check value"):
        Keyring.open(engine, LocalKeyWrapper(ROOT_KEY))


def test_corrupt_tenant_key_is_told_apart_from_a_wrong_root_key(
    engine: sa.Engine, store: RetentionStore
) -> None:
    store.retain(
        tenant="acme", subject="s", call_id="c1", model="m", request=b"x", request_ttl_s=60
    )
    with engine.begin() as conn:
        blob = conn.execute(sa.select(retention_tenant_keys.c.wrapped_key)).scalar_one()
        damaged = blob[:-1] + bytes([blob[-1] ^ 1])
        conn.execute(sa.update(retention_tenant_keys).values(wrapped_key=damaged))
    fresh = Keyring.open(engine, LocalKeyWrapper(ROOT_KEY))  # the check value still opens
    with pytest.raises(KeyringCorrupt, match="damaged"):
        fresh.verify_all()


def test_rotation_keeps_old_records_readable_and_rewrap_moves_them(
    engine: sa.Engine, keyring: Keyring, store: RetentionStore
) -> None:
    (old,) = store.retain(
        tenant="acme", subject="s", call_id="c1", model="m", request=b"old", request_ttl_s=60
    )
    assert old.key_id == "kek/acme/v1"
    assert keyring.rotate("acme") == 2
    (new,) = store.retain(
        tenant="acme", subject="s", call_id="c2", model="m", request=b"new", request_ttl_s=60
    )
    assert new.key_id == "kek/acme/v2"
    assert store.get(old.record_id, tenant="acme").payload == b"old"
    assert keyring.destroy_unused_versions("acme") == []  # v1 still wraps a record

    assert store.rewrap("acme") == 1
    assert keyring.destroy_unused_versions("acme") == [1]
    assert keyring.versions("acme") == [2]
    got = store.get(old.record_id, tenant="acme")
    assert got.payload == b"old"
    assert got.info.key_id == "kek/acme/v2"


def test_rotation_is_per_tenant(keyring: Keyring, store: RetentionStore) -> None:
    for tenant in ("acme", "globex"):
        store.retain(
            tenant=tenant, subject="s", call_id="c", model="m", request=b"x", request_ttl_s=9
        )
    keyring.rotate("acme")
    assert keyring.versions("acme") == [1, 2]
    assert keyring.versions("globex") == [1]
    assert keyring.tenants() == ["acme", "globex"]


def test_root_key_rotation_rewraps_every_tenant_key(
    engine: sa.Engine, keyring: Keyring, store: RetentionStore
) -> None:
    (info,) = store.retain(
        tenant="acme", subject="s", call_id="c", model="m", request=b"kept", request_ttl_s=60
    )
    new_root = LocalKeyWrapper(b"\x07" * 32)
    assert keyring.rewrap_root(new_root) == 1
    with pytest.raises(RootKeyError):
        Keyring.open(engine, LocalKeyWrapper(ROOT_KEY))
    reopened = RetentionStore(engine, Keyring.open(engine, new_root), clock=lambda: NOW)
    assert reopened.get(info.record_id, tenant="acme").payload == b"kept"
    assert count(engine, retention_keyring) == 1


def test_a_destroyed_key_version_makes_its_records_unreadable(
    engine: sa.Engine, store: RetentionStore
) -> None:
    (info,) = store.retain(
        tenant="acme", subject="s", call_id="c", model="m", request=b"x", request_ttl_s=60
    )
    with engine.begin() as conn:
        conn.execute(sa.delete(retention_tenant_keys))
    with pytest.raises(Exception, match="key is unusable"):
        store.get(info.record_id, tenant="acme", now=NOW + timedelta(seconds=1))
    with pytest.raises(NotFound):
        store.get(info.record_id, tenant="globex")


def test_local_wrapper_refuses_short_keys() -> None:
    with pytest.raises(RootKeyError, match="32 bytes"):
        LocalKeyWrapper(b"short")

"""Retained records: encryption with bound context, tenant isolation, listing, holds."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from broker.errors import Internal, InvalidArgument, NotFound
from broker.retention.model import PayloadKind
from broker.retention.records import RetentionStore
from broker.retention.tables import retention_records
from tests.unit.retention.conftest import NOW


def _retain(store: RetentionStore, tenant: str = "acme", **kw: object) -> str:
    args: dict[str, object] = {
        "subject": "alice",
        "call_id": "call-1",
        "model": "v/m@1",
        "request": b'{"q": 1}',
        "request_ttl_s": 60,
    }
    args.update(kw)
    (info,) = store.retain(tenant=tenant, **args)  # type: ignore[arg-type]
    return info.record_id


def test_both_halves_are_kept_with_their_own_ttls_and_keys(
    engine: sa.Engine, store: RetentionStore
) -> None:
    infos = store.retain(
        tenant="acme",
        subject="alice",
        call_id="call-1",
        model="v/m@1",
        request=b"REQ",
        response=b"ANSWER",
        request_ttl_s=7 * 86400,
        response_ttl_s=30 * 86400,
    )
    assert [i.kind for i in infos] == [PayloadKind.REQUEST, PayloadKind.RESPONSE]
    assert infos[0].due_time == NOW + timedelta(days=7)
    assert infos[1].due_time == NOW + timedelta(days=30)
    assert infos[1].size_bytes == len(b"ANSWER")
    assert store.get(infos[1].record_id, tenant="acme").payload == b"ANSWER"
    with engine.connect() as conn:
        keys = conn.execute(sa.select(retention_records.c.wrapped_key)).scalars().all()
        blobs = conn.execute(sa.select(retention_records.c.ciphertext)).scalars().all()
    assert len(set(keys)) == 2
    assert all(b"REQ" not in blob and b"ANSWER" not in blob for blob in blobs)


def test_nothing_is_kept_without_a_positive_ttl(store: RetentionStore) -> None:
    assert store.retain(tenant="a", subject="s", call_id="c", model="m", request=b"x") == ()
    assert (
        store.retain(tenant="a", subject="s", call_id="c", model="m", request=b"x", request_ttl_s=0)
        == ()
    )


def test_absurd_ttl_is_refused(store: RetentionStore) -> None:
    with pytest.raises(InvalidArgument):
        _retain(store, request_ttl_s=10**12)


def test_another_tenants_record_is_not_found_like_a_missing_one(store: RetentionStore) -> None:
    record_id = _retain(store)
    with pytest.raises(NotFound) as other:
        store.get(record_id, tenant="globex")
    with pytest.raises(NotFound) as missing:
        store.get("00000000-0000-0000-0000-000000000000", tenant="globex")
    assert other.value.message.replace(record_id, "X") == missing.value.message.replace(
        "00000000-0000-0000-0000-000000000000", "X"
    )


def test_a_record_is_not_served_past_its_due_time(store: RetentionStore) -> None:
    record_id = _retain(store)
    assert store.get(record_id, tenant="acme", now=NOW + timedelta(seconds=59)).payload
    with pytest.raises(NotFound):
        store.get(record_id, tenant="acme", now=NOW + timedelta(seconds=60))


def test_ciphertext_moved_to_another_record_does_not_decrypt(
    engine: sa.Engine, store: RetentionStore
) -> None:
    first = _retain(store, request=b"first")
    second = _retain(store, request=b"second")
    with engine.begin() as conn:
        row = conn.execute(
            sa.select(retention_records).where(retention_records.c.record_id == first)
        ).one()
        conn.execute(
            sa.update(retention_records)
            .where(retention_records.c.record_id == second)
            .values(ciphertext=row.ciphertext, wrapped_key=row.wrapped_key)
        )
    with pytest.raises(Internal):
        store.get(second, tenant="acme")


def test_listing_pages_by_due_time_and_filters(store: RetentionStore) -> None:
    ids = [_retain(store, request_ttl_s=100 - i, subject=f"s{i % 2}") for i in range(5)]
    _retain(store, tenant="globex")
    page, token = store.list(tenant="acme", page_size=2)
    seen = [i.record_id for i in page]
    while token:
        page, token = store.list(tenant="acme", page_size=2, page_token=token)
        seen += [i.record_id for i in page]
    assert seen == list(reversed(ids))
    only, _ = store.list(tenant="acme", subject="s1")
    assert {i.subject for i in only} == {"s1"} and len(only) == 2
    everything, _ = store.list(tenant=None)
    assert len(everything) == 6
    with pytest.raises(InvalidArgument):
        store.list(tenant="acme", page_token="not-a-token")


def test_holds_show_in_metadata(store: RetentionStore) -> None:
    record_id = _retain(store)
    assert store.set_record_hold(record_id, tenant="acme", held=True).held
    with pytest.raises(NotFound):
        store.set_record_hold(record_id, tenant="globex", held=True)
    assert store.set_tenant_hold("acme", held=True, reason="case 7")
    assert not store.set_tenant_hold("acme", held=True, reason="again")
    (info,), _ = store.list(tenant="acme")
    assert info.held and info.tenant_held and info.deletion_blocked
    assert store.count_held(tenant="acme") == 1
    assert store.set_tenant_hold("acme", held=False)
    assert not store.set_record_hold(record_id, tenant=None, held=False).held
    assert store.count_held(tenant=None) == 0

"""RegistryStore on SQLite and PostgreSQL: uniqueness, resolution, paging, updates."""

from __future__ import annotations

import base64
import dataclasses
import threading
from typing import Any

import pytest
import sqlalchemy as sa

from broker.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from broker.registry.model import (
    Endpoint,
    ModelStatus,
    OipMapping,
    Runtime,
    TensorInput,
    TensorOutput,
)
from broker.registry.refs import ModelRef
from broker.registry.store import RegistryStore, version_sort_key
from tests.unit.registry.builders import NOW, count_versions, oip_model


def test_register_then_get_round_trips_every_field(store: RegistryStore) -> None:
    mv = oip_model()
    stored = store.register(mv)
    assert stored == dataclasses.replace(mv, create_time=NOW, update_time=NOW)
    assert store.get("acme", "iris", "1.0.0") == stored
    assert stored.create_time is not None
    assert stored.create_time.tzinfo is not None


def test_duplicate_version_is_already_exists_and_adds_no_rows(
    store: RegistryStore, engine: sa.Engine
) -> None:
    store.register(oip_model())
    with pytest.raises(AlreadyExists, match=r"acme/iris@1\.0\.0"):
        store.register(oip_model(description="second"))
    assert count_versions(engine) == 1
    assert store.get("acme", "iris", "1.0.0").description == "Iris classifier"


def test_failed_first_registration_leaves_no_vendor_or_model_row(
    store: RegistryStore, engine: sa.Engine
) -> None:
    store.register(oip_model(vendor="acme"))
    with pytest.raises(AlreadyExists):
        store.register(oip_model(vendor="acme"))
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM vendors")).scalar_one() == 1
        assert conn.execute(sa.text("SELECT count(*) FROM models")).scalar_one() == 1


def test_concurrent_duplicate_registration_leaves_exactly_one_row(
    store: RegistryStore, engine: sa.Engine
) -> None:
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def register() -> None:
        barrier.wait()
        try:
            store.register(oip_model(vendor="racer", name="model"))
            outcomes.append("ok")
        except AlreadyExists:
            outcomes.append("exists")

    threads = [threading.Thread(target=register) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["exists", "exists", "exists", "ok"]
    assert count_versions(engine) == 1


def test_concurrent_first_versions_of_one_model_both_succeed(store: RegistryStore) -> None:
    barrier = threading.Barrier(2)
    errors: list[Exception] = []

    def register(version: str) -> None:
        barrier.wait()
        try:
            store.register(oip_model(vendor="new", name="fresh", version=version))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(v,)) for v in ("1.0", "2.0")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    versions, _ = store.list_vendor("new", 0, "")
    assert [mv.version for mv in versions] == ["1.0", "2.0"]


def test_get_unknown_is_not_found(store: RegistryStore) -> None:
    with pytest.raises(NotFound, match=r"model acme/iris@9 not found"):
        store.get("acme", "iris", "9")


def test_resolve_without_version_picks_newest_listed_by_pep440(store: RegistryStore) -> None:
    for version in ("1.9.0", "1.10.0", "1.2.0"):
        store.register(oip_model(version=version))
    store.register(oip_model(version="2.0.0", status=ModelStatus.DRAFT))
    mv = store.resolve(ModelRef("acme", "iris"), callable_only=True)
    assert mv.version == "1.10.0"


def test_resolve_skips_retired_versions(store: RegistryStore) -> None:
    store.register(oip_model(version="1.0.0"))
    store.register(oip_model(version="1.1.0"))
    store.retire("acme", "iris", "1.1.0")
    assert store.resolve(ModelRef("acme", "iris"), callable_only=True).version == "1.0.0"


def test_resolve_retired_version_is_failed_precondition(store: RegistryStore) -> None:
    store.register(oip_model())
    store.retire("acme", "iris", "1.0.0")
    with pytest.raises(FailedPrecondition, match="is retired"):
        store.resolve(ModelRef("acme", "iris", "1.0.0"), callable_only=True)
    assert store.resolve(ModelRef("acme", "iris", "1.0.0"), callable_only=False).status is (
        ModelStatus.RETIRED
    )


def test_resolve_draft_is_hidden_from_callers(store: RegistryStore) -> None:
    store.register(oip_model(status=ModelStatus.DRAFT))
    with pytest.raises(NotFound):
        store.resolve(ModelRef("acme", "iris", "1.0.0"), callable_only=True)
    with pytest.raises(NotFound):
        store.resolve(ModelRef("acme", "iris"), callable_only=True)
    assert store.resolve(ModelRef("acme", "iris", "1.0.0"), callable_only=False).status is (
        ModelStatus.DRAFT
    )


def test_version_sort_key_orders_pep440_above_unparseable() -> None:
    versions = ["1.9.0", "1.10.0", "banana", "apple", "1.0", "1.0.0", "2.0.0rc1"]
    assert sorted(versions, key=version_sort_key) == [
        "apple",
        "banana",
        "1.0",
        "1.0.0",
        "1.9.0",
        "1.10.0",
        "2.0.0rc1",
    ]


def test_catalog_pages_through_listed_models_in_order(store: RegistryStore) -> None:
    for vendor in ("beta", "alpha"):
        for name in ("m2", "m1"):
            for version in ("1", "2"):
                store.register(oip_model(vendor=vendor, name=name, version=version))
    store.register(oip_model(vendor="alpha", name="m0", version="1", status=ModelStatus.DRAFT))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page, token = store.list_catalog(None, 3, token)
        pages += 1
        seen.extend(mv.ref for mv in page)
        if not token:
            break
    assert pages == 3
    assert seen == [
        f"{vendor}/{name}@{version}"
        for vendor in ("alpha", "beta")
        for name in ("m1", "m2")
        for version in ("1", "2")
    ]


def test_catalog_filters_by_vendor(store: RegistryStore) -> None:
    store.register(oip_model(vendor="alpha"))
    store.register(oip_model(vendor="beta"))
    page, token = store.list_catalog("beta", 10, "")
    assert [mv.vendor for mv in page] == ["beta"]
    assert token == ""


def test_exact_page_has_no_next_token(store: RegistryStore) -> None:
    store.register(oip_model(version="1"))
    store.register(oip_model(version="2"))
    page, token = store.list_vendor("acme", 2, "")
    assert len(page) == 2
    assert token == ""


def test_vendor_list_has_every_status(store: RegistryStore) -> None:
    store.register(oip_model(version="1", status=ModelStatus.DRAFT))
    store.register(oip_model(version="2"))
    store.register(oip_model(version="3"))
    store.retire("acme", "iris", "3")
    page, _ = store.list_vendor("acme", 0, "")
    assert [mv.status for mv in page] == [
        ModelStatus.DRAFT,
        ModelStatus.LISTED,
        ModelStatus.RETIRED,
    ]


@pytest.mark.parametrize(
    "token",
    [
        "not base64 !!",
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(b'{"s":"vendor:acme","k":["a"]}').decode(),
        base64.urlsafe_b64encode(b'{"s":"vendor:other","k":["a","b"]}').decode(),
        "x" * 2000,
    ],
)
def test_bad_page_token_is_invalid_argument(store: RegistryStore, token: str) -> None:
    with pytest.raises(InvalidArgument, match="page_token"):
        store.list_vendor("acme", 10, token)


def test_token_from_one_list_is_refused_by_another(store: RegistryStore) -> None:
    store.register(oip_model(version="1"))
    store.register(oip_model(version="2"))
    _, token = store.list_vendor("acme", 1, "")
    with pytest.raises(InvalidArgument, match="page_token"):
        store.list_catalog(None, 1, token)


def test_negative_page_size_is_invalid(store: RegistryStore) -> None:
    with pytest.raises(InvalidArgument, match="page_size"):
        store.list_catalog(None, -1, "")


def test_update_changes_fields_and_time(engine: sa.Engine) -> None:
    times = iter([NOW, NOW.replace(hour=13)])
    store = RegistryStore(engine, clock=lambda: next(times))
    store.register(oip_model())
    endpoint = Endpoint(target="models.example:443", tls=True)
    updated = store.update(
        "acme",
        "iris",
        "1.0.0",
        {"description": "new", "endpoint": endpoint, "status": ModelStatus.DRAFT},
    )
    assert updated.update_time == NOW.replace(hour=13)
    assert updated.create_time == NOW
    assert store.get("acme", "iris", "1.0.0") == updated
    assert updated.endpoint == endpoint
    assert updated.status is ModelStatus.DRAFT


def test_update_is_validated_as_a_whole(store: RegistryStore) -> None:
    store.register(oip_model())
    with pytest.raises(InvalidArgument, match=r"model\.endpoint\.target"):
        store.update("acme", "iris", "1.0.0", {"endpoint": None})
    with pytest.raises(InvalidArgument, match="runtime"):
        store.update("acme", "iris", "1.0.0", {"runtime": Runtime.SANDBOX})


def test_update_cannot_retire_and_retired_is_final(store: RegistryStore) -> None:
    store.register(oip_model())
    with pytest.raises(FailedPrecondition, match="RetireModel"):
        store.update("acme", "iris", "1.0.0", {"status": ModelStatus.RETIRED})
    store.retire("acme", "iris", "1.0.0")
    with pytest.raises(FailedPrecondition, match="retirement is final"):
        store.update("acme", "iris", "1.0.0", {"status": ModelStatus.LISTED})
    with pytest.raises(FailedPrecondition, match="retirement is final"):
        store.retire("acme", "iris", "1.0.0")


def test_update_and_retire_unknown_are_not_found(store: RegistryStore) -> None:
    with pytest.raises(NotFound):
        store.update("acme", "iris", "1.0.0", {"description": "x"})
    with pytest.raises(NotFound):
        store.retire("acme", "iris", "1.0.0")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "Bad Name"}, r"model\.name"),
        ({"version": "-1"}, r"model\.version"),
        ({"vendor": "a/b"}, r"model\.vendor"),
        ({"endpoint": None}, r"model\.endpoint\.target"),
        ({"oip_mapping": OipMapping()}, r"model\.oip_mapping\.inputs"),
        (
            {
                "oip_mapping": OipMapping(
                    inputs=(TensorInput(name="x", datatype="FP32", shape=(1,)),)
                )
            },
            r"inputs\[0\] must set exactly one of path and paths",
        ),
        (
            {
                "oip_mapping": OipMapping(
                    inputs=(TensorInput(name="x", datatype="FP32", shape=(-1, -1), path="/a"),)
                )
            },
            r"inputs\[0\]\.shape may have at most one -1",
        ),
        (
            {
                "oip_mapping": OipMapping(
                    inputs=(TensorInput(name="x", datatype="FLOAT", shape=(1,), path="/a"),)
                )
            },
            r"inputs\[0\]\.datatype",
        ),
        (
            {
                "oip_mapping": OipMapping(
                    inputs=(TensorInput(name="x", datatype="FP32", shape=(1,), path="a"),)
                )
            },
            r"inputs\[0\]\.path is not a JSON Pointer",
        ),
        # Found by the oip_request fuzz harness: accepted here, then refused on every call
        # (FAILED_PRECONDITION) because the mapping could never compile.
        (
            {
                "oip_mapping": OipMapping(
                    inputs=(TensorInput(name="x", datatype="FP32", shape=(1,), path="/x"),),
                    outputs=(TensorOutput(name="a", path="/o"), TensorOutput(name="b", path="/o")),
                )
            },
            r"oip_mapping: .*output 'b': /o is taken by another output",
        ),
        (
            {
                "oip_mapping": OipMapping(
                    inputs=(TensorInput(name="x", datatype="FP32", shape=(3,), paths=("/a",)),)
                )
            },
            r"oip_mapping: .*gives 1 values, shape \[3\] needs 3",
        ),
        (
            {
                "oip_mapping": OipMapping(
                    inputs=(TensorInput(name="x", datatype="FP16", shape=(1,), path="/x"),)
                )
            },
            r"oip_mapping: .*datatype 'FP16' cannot be sent as an input",
        ),
        ({"status": ModelStatus.RETIRED}, r"model\.status"),
    ],
)
def test_register_rejects_invalid_models_naming_the_field(
    store: RegistryStore, engine: sa.Engine, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        store.register(oip_model(**changes))
    assert count_versions(engine) == 0


def test_sandbox_model_needs_no_endpoint(store: RegistryStore) -> None:
    mv = oip_model(
        runtime=Runtime.SANDBOX,
        endpoint=None,
        oip_mapping=OipMapping(),
        package_digest="sha256:" + "0" * 64,
    )
    assert store.register(mv).endpoint is None

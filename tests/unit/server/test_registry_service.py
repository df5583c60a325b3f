"""RegistryServicer called directly, with the principal set as the auth interceptor would."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf.field_mask_pb2 import FieldMask

from broker._proto.broker.v1 import models_pb2, registry_pb2
from broker.auth.principal import Principal, Role
from broker.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from broker.registry.convert import model_to_proto
from broker.registry.model import ModelVersion
from broker.registry.store import RegistryStore
from broker.server.context import principal_var
from broker.server.registry_service import RegistryServicer
from broker.storage.db import create_engine_for, migrate
from tests.unit.registry.builders import NOW, count_versions, oip_model

CONTEXT = cast(grpc.ServicerContext, object())


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = create_engine_for(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def events() -> list[tuple[str, ModelVersion]]:
    return []


@pytest.fixture
def servicer(engine: sa.Engine, events: list[tuple[str, ModelVersion]]) -> RegistryServicer:
    store = RegistryStore(engine, clock=lambda: NOW)
    return RegistryServicer(store, on_change=lambda kind, mv: events.append((kind, mv)))


@contextmanager
def acting_as(tenant: str, *roles: Role) -> Iterator[None]:
    principal = Principal(
        tenant=tenant,
        subject=f"svc@{tenant}",
        roles=frozenset(roles),
        issuer="https://issuer.test",
        expires_at=0.0,
    )
    token = principal_var().set(principal)
    try:
        yield
    finally:
        principal_var().reset(token)


def register(servicer: RegistryServicer, **changes: Any) -> models_pb2.Model:
    msg = model_to_proto(oip_model(**changes))
    msg.ClearField("ref")
    response = servicer.RegisterModel(registry_pb2.RegisterModelRequest(model=msg), CONTEXT)
    return response.model


def test_vendor_registers_under_its_own_tenant(
    servicer: RegistryServicer, events: list[tuple[str, ModelVersion]]
) -> None:
    with acting_as("acme", Role.VENDOR):
        model = register(servicer, vendor="")
    assert model.ref == "acme/iris@1.0.0"
    assert model.create_time.ToDatetime().year == 2025
    assert model.status == models_pb2.MODEL_STATUS_LISTED
    assert [(kind, mv.ref) for kind, mv in events] == [("registered", "acme/iris@1.0.0")]


def test_unspecified_status_registers_as_listed(servicer: RegistryServicer) -> None:
    msg = model_to_proto(oip_model())
    msg.status = models_pb2.MODEL_STATUS_UNSPECIFIED
    with acting_as("acme", Role.VENDOR):
        response = servicer.RegisterModel(registry_pb2.RegisterModelRequest(model=msg), CONTEXT)
    assert response.model.status == models_pb2.MODEL_STATUS_LISTED


def test_unspecified_runtime_is_invalid(servicer: RegistryServicer) -> None:
    msg = model_to_proto(oip_model())
    msg.runtime = models_pb2.RUNTIME_UNSPECIFIED
    with acting_as("acme", Role.VENDOR), pytest.raises(InvalidArgument, match=r"model\.runtime"):
        servicer.RegisterModel(registry_pb2.RegisterModelRequest(model=msg), CONTEXT)


def test_duplicate_registration_is_already_exists_without_event(
    servicer: RegistryServicer, engine: sa.Engine, events: list[tuple[str, ModelVersion]]
) -> None:
    with acting_as("acme", Role.VENDOR):
        register(servicer)
        with pytest.raises(AlreadyExists):
            register(servicer)
    assert count_versions(engine) == 1
    assert len(events) == 1


def test_vendor_cannot_register_for_another_vendor(servicer: RegistryServicer) -> None:
    with acting_as("acme", Role.VENDOR), pytest.raises(PermissionDenied):
        register(servicer, vendor="globex")


def test_admin_manages_any_vendor(servicer: RegistryServicer) -> None:
    with acting_as("operator", Role.ADMIN):
        register(servicer, vendor="globex")
        got = servicer.GetModel(registry_pb2.GetModelRequest(ref="globex/iris@1.0.0"), CONTEXT)
        listed = servicer.ListVendorModels(
            registry_pb2.ListVendorModelsRequest(vendor="globex"), CONTEXT
        )
        retired = servicer.RetireModel(
            registry_pb2.RetireModelRequest(ref="globex/iris@1.0.0"), CONTEXT
        )
    assert got.model.ref == "globex/iris@1.0.0"
    assert [m.ref for m in listed.models] == ["globex/iris@1.0.0"]
    assert retired.model.status == models_pb2.MODEL_STATUS_RETIRED


@pytest.mark.parametrize("roles", [(), (Role.BUYER,), (Role.COMPLIANCE, Role.POLICY_ADMIN)])
def test_other_roles_are_permission_denied(
    servicer: RegistryServicer, roles: tuple[Role, ...]
) -> None:
    with acting_as("acme", *roles):
        with pytest.raises(PermissionDenied):
            register(servicer)
        with pytest.raises(PermissionDenied):
            servicer.GetModel(registry_pb2.GetModelRequest(ref="acme/iris@1.0.0"), CONTEXT)
        with pytest.raises(PermissionDenied):
            servicer.ListVendorModels(registry_pb2.ListVendorModelsRequest(), CONTEXT)


def test_no_principal_is_internal(servicer: RegistryServicer) -> None:
    with pytest.raises(Internal):
        servicer.GetModel(registry_pb2.GetModelRequest(ref="acme/iris@1.0.0"), CONTEXT)


def test_vendor_cannot_see_or_change_another_vendors_model(
    servicer: RegistryServicer, events: list[tuple[str, ModelVersion]]
) -> None:
    with acting_as("globex", Role.VENDOR):
        register(servicer, vendor="globex")
    with acting_as("acme", Role.VENDOR):
        with pytest.raises(NotFound) as hidden:
            servicer.GetModel(registry_pb2.GetModelRequest(ref="globex/iris@1.0.0"), CONTEXT)
        with pytest.raises(NotFound) as absent:
            servicer.GetModel(registry_pb2.GetModelRequest(ref="acme/iris@1.0.0"), CONTEXT)
        with pytest.raises(NotFound):
            servicer.RetireModel(registry_pb2.RetireModelRequest(ref="globex/iris@1.0.0"), CONTEXT)
        msg = model_to_proto(oip_model(vendor="globex", description="defaced"))
        with pytest.raises(NotFound):
            servicer.UpdateModel(
                registry_pb2.UpdateModelRequest(
                    model=msg, update_mask=FieldMask(paths=["description"])
                ),
                CONTEXT,
            )
        with pytest.raises(PermissionDenied):
            servicer.ListVendorModels(
                registry_pb2.ListVendorModelsRequest(vendor="globex"), CONTEXT
            )
        own = servicer.ListVendorModels(registry_pb2.ListVendorModelsRequest(), CONTEXT)
    assert own.models == []
    # The same text whether the model is hidden or absent: no existence leak.
    assert str(hidden.value).replace("globex", "acme") == str(absent.value)
    with acting_as("globex", Role.VENDOR):
        got = servicer.GetModel(registry_pb2.GetModelRequest(ref="globex/iris@1.0.0"), CONTEXT)
    assert got.model.description == "Iris classifier"
    assert [kind for kind, _ in events] == ["registered"]


def test_get_without_version_returns_newest_listed(servicer: RegistryServicer) -> None:
    with acting_as("acme", Role.VENDOR):
        for version in ("1.9.0", "1.10.0"):
            register(servicer, version=version)
        got = servicer.GetModel(registry_pb2.GetModelRequest(ref="acme/iris"), CONTEXT)
    assert got.model.version == "1.10.0"


def test_bad_ref_is_invalid_argument(servicer: RegistryServicer) -> None:
    with acting_as("acme", Role.VENDOR), pytest.raises(InvalidArgument, match="vendor/name"):
        servicer.GetModel(registry_pb2.GetModelRequest(ref="iris"), CONTEXT)


def test_update_applies_only_masked_fields(
    servicer: RegistryServicer, events: list[tuple[str, ModelVersion]]
) -> None:
    with acting_as("acme", Role.VENDOR):
        register(servicer)
        msg = model_to_proto(oip_model(description="changed"))
        msg.status = models_pb2.MODEL_STATUS_DRAFT
        msg.ClearField("fields")
        response = servicer.UpdateModel(
            registry_pb2.UpdateModelRequest(
                model=msg, update_mask=FieldMask(paths=["description", "status"])
            ),
            CONTEXT,
        )
    assert response.model.description == "changed"
    assert response.model.status == models_pb2.MODEL_STATUS_DRAFT
    assert len(response.model.fields) == 2
    assert [kind for kind, _ in events] == ["registered", "updated"]


@pytest.mark.parametrize(
    ("paths", "status", "error", "message"),
    [
        (["runtime"], 0, InvalidArgument, "update_mask names runtime"),
        ([], 0, InvalidArgument, "update_mask must name"),
        (["status"], models_pb2.MODEL_STATUS_RETIRED, FailedPrecondition, "RetireModel"),
        (["status"], models_pb2.MODEL_STATUS_UNSPECIFIED, InvalidArgument, "model.status"),
    ],
)
def test_update_rejects_bad_masks(
    servicer: RegistryServicer,
    paths: list[str],
    status: models_pb2.ModelStatus.ValueType,
    error: type[Exception],
    message: str,
) -> None:
    with acting_as("acme", Role.VENDOR):
        register(servicer)
        msg = model_to_proto(oip_model())
        msg.status = status
        with pytest.raises(error, match=message):
            servicer.UpdateModel(
                registry_pb2.UpdateModelRequest(model=msg, update_mask=FieldMask(paths=paths)),
                CONTEXT,
            )


def test_retired_is_terminal(servicer: RegistryServicer) -> None:
    with acting_as("acme", Role.VENDOR):
        register(servicer)
        servicer.RetireModel(registry_pb2.RetireModelRequest(ref="acme/iris@1.0.0"), CONTEXT)
        msg = model_to_proto(oip_model())
        with pytest.raises(FailedPrecondition):
            servicer.UpdateModel(
                registry_pb2.UpdateModelRequest(model=msg, update_mask=FieldMask(paths=["status"])),
                CONTEXT,
            )


def test_retire_needs_a_version(servicer: RegistryServicer) -> None:
    with (
        acting_as("acme", Role.VENDOR),
        pytest.raises(InvalidArgument, match="must name a version"),
    ):
        servicer.RetireModel(registry_pb2.RetireModelRequest(ref="acme/iris"), CONTEXT)


def test_list_pages_through_own_models(servicer: RegistryServicer) -> None:
    with acting_as("acme", Role.VENDOR):
        for version in ("1", "2", "3"):
            register(servicer, version=version)
        first = servicer.ListVendorModels(
            registry_pb2.ListVendorModelsRequest(page_size=2), CONTEXT
        )
        second = servicer.ListVendorModels(
            registry_pb2.ListVendorModelsRequest(page_size=2, page_token=first.next_page_token),
            CONTEXT,
        )
    assert [m.version for m in first.models] == ["1", "2"]
    assert [m.version for m in second.models] == ["3"]
    assert second.next_page_token == ""

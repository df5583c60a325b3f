"""``broker.v1.Registry``: vendors publish, update and retire their model versions.

The servicer translates and delegates: protobuf in, domain objects to ``RegistryStore``,
protobuf out. It decides only who may act on which vendor's models:

- ``admin`` manages every vendor's models;
- ``vendor`` manages only models whose vendor is its own tenant;
- anyone else gets PermissionDenied.

A vendor that reads, updates or retires another vendor's model gets NotFound with exactly the
message an absent model gives, so it cannot probe which models its competitors have in draft.
Registering under, or listing, another vendor gets PermissionDenied instead: the answer does
not depend on what exists, so it leaks nothing and says plainly what is wrong.

Errors are raised as ``BrokerError`` subclasses; the error interceptor turns them into
statuses, so nothing here calls ``context.abort``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Literal

import grpc

from broker._proto.broker.v1 import models_pb2, registry_pb2, registry_pb2_grpc
from broker.auth.principal import Principal, Role, require_role
from broker.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from broker.registry.convert import (
    api_key_from_proto,
    endpoint_from_proto,
    field_spec_from_proto,
    model_from_proto,
    model_to_proto,
    oip_mapping_from_proto,
    pricing_from_proto,
    status_from_proto,
)
from broker.registry.model import ModelStatus, ModelVersion
from broker.registry.refs import ModelRef, not_found
from broker.registry.secrets import EndpointSecrets, check_api_key
from broker.registry.store import UPDATABLE, RegistryStore
from broker.server.context import current_principal

ChangeKind = Literal["registered", "updated", "retired"]
#: Called after a change is committed, for example to append an audit event. An exception it
#: raises reaches the caller as that error, although the change itself is already stored.
ChangeHook = Callable[[ChangeKind, ModelVersion], None]

_MANAGERS: Final = (Role.VENDOR, Role.ADMIN)
#: UpdateModel mask path that replaces (or, empty, removes) only the endpoint's API key.
API_KEY_PATH: Final = "endpoint.api_key"


class RegistryServicer(registry_pb2_grpc.RegistryServicer):
    """The Registry service over a ``RegistryStore``."""

    def __init__(
        self,
        store: RegistryStore,
        *,
        on_change: ChangeHook | None = None,
        secrets: EndpointSecrets | None = None,
    ) -> None:
        self._store = store
        self._on_change = on_change
        self._secrets = secrets

    def RegisterModel(  # noqa: N802 - the proto fixes gRPC method names
        self, request: registry_pb2.RegisterModelRequest, context: grpc.ServicerContext
    ) -> registry_pb2.RegisterModelResponse:
        """Add a version under the caller's tenant (or, for an admin, the named vendor)."""
        principal = _manager()
        mv = model_from_proto(request.model, vendor=principal.tenant)
        if not _may_manage(principal, mv.vendor):
            raise PermissionDenied("a vendor may register models only under its own tenant")
        api_key = self._checked_key(api_key_from_proto(request.model))
        stored = self._store.register(mv)
        if api_key:
            self._keys().put(stored, api_key)
        self._notify("registered", stored)
        return registry_pb2.RegisterModelResponse(model=self._to_proto(stored))

    def GetModel(  # noqa: N802 - the proto fixes gRPC method names
        self, request: registry_pb2.GetModelRequest, context: grpc.ServicerContext
    ) -> registry_pb2.GetModelResponse:
        """One version in any status, or the newest LISTED one when the ref has no version."""
        ref = self._owned_ref(request.ref)
        mv = self._store.resolve(ref, callable_only=False)
        return registry_pb2.GetModelResponse(model=self._to_proto(mv))

    def ListVendorModels(  # noqa: N802 - the proto fixes gRPC method names
        self, request: registry_pb2.ListVendorModelsRequest, context: grpc.ServicerContext
    ) -> registry_pb2.ListVendorModelsResponse:
        """One page of a vendor's versions in every status, by name and version."""
        principal = _manager()
        vendor = request.vendor or principal.tenant
        if not _may_manage(principal, vendor):
            raise PermissionDenied("only an admin may list another vendor's models")
        models, token = self._store.list_vendor(vendor, request.page_size, request.page_token)
        with_keys = self._secrets.is_set(mv.ref for mv in models) if self._secrets else set()
        return registry_pb2.ListVendorModelsResponse(
            models=[model_to_proto(mv, api_key_set=mv.ref in with_keys) for mv in models],
            next_page_token=token,
        )

    def UpdateModel(  # noqa: N802 - the proto fixes gRPC method names
        self, request: registry_pb2.UpdateModelRequest, context: grpc.ServicerContext
    ) -> registry_pb2.UpdateModelResponse:
        """Change the fields named in ``update_mask``; see ``_changes`` for what is allowed."""
        principal = _manager()
        msg = request.model
        ref = ModelRef(msg.vendor or principal.tenant, msg.name, msg.version)
        if not msg.name or not msg.version:
            raise InvalidArgument("model.name and model.version must name the version to update")
        if not _may_manage(principal, ref.vendor):
            raise NotFound(not_found(ref))
        paths = set(request.update_mask.paths)
        api_key = self._checked_key(api_key_from_proto(msg))
        if paths == {API_KEY_PATH}:
            updated = self._store.get(ref.vendor, ref.name, msg.version)
            if updated.status is ModelStatus.RETIRED:
                raise FailedPrecondition(f"model {updated.ref} is retired; retirement is final")
        else:
            changes = _changes(request)
            updated = self._store.update(ref.vendor, ref.name, msg.version, changes)
        if API_KEY_PATH in paths or (api_key and "endpoint" in paths):
            self._keys().put(updated, api_key)
        self._notify("updated", updated)
        return registry_pb2.UpdateModelResponse(model=self._to_proto(updated))

    def RetireModel(  # noqa: N802 - the proto fixes gRPC method names
        self, request: registry_pb2.RetireModelRequest, context: grpc.ServicerContext
    ) -> registry_pb2.RetireModelResponse:
        """Retire one exact version; final, and FailedPrecondition if it is retired already."""
        ref = self._owned_ref(request.ref)
        version = ref.require_version()
        retired = self._store.retire(ref.vendor, ref.name, version)
        if self._secrets is not None:
            self._secrets.remove(retired)  # a retired version is never called again
        self._notify("retired", retired)
        return registry_pb2.RetireModelResponse(model=self._to_proto(retired))

    def _owned_ref(self, text: str) -> ModelRef:
        """Parse ``text``; NotFound (not PermissionDenied) if the caller may not manage it."""
        principal = _manager()
        ref = ModelRef.parse(text)
        if not _may_manage(principal, ref.vendor):
            raise NotFound(not_found(ref))
        return ref

    def _checked_key(self, api_key: str) -> str:
        if api_key:
            check_api_key(api_key)
            self._keys()
        return api_key

    def _keys(self) -> EndpointSecrets:
        if self._secrets is None:
            raise FailedPrecondition("this broker does not store endpoint API keys")
        return self._secrets

    def _to_proto(self, mv: ModelVersion) -> models_pb2.Model:
        key_set = bool(self._secrets and self._secrets.is_set([mv.ref]))
        return model_to_proto(mv, api_key_set=key_set)

    def _notify(self, kind: ChangeKind, mv: ModelVersion) -> None:
        if self._on_change is not None:
            self._on_change(kind, mv)


def _manager() -> Principal:
    principal = current_principal()
    require_role(principal, *_MANAGERS)
    return principal


def _may_manage(principal: Principal, vendor: str) -> bool:
    if principal.has_role(Role.ADMIN):
        return True
    return principal.has_role(Role.VENDOR) and principal.tenant == vendor


def _changes(request: registry_pb2.UpdateModelRequest) -> dict[str, Any]:
    """Translate the mask into ``RegistryStore.update`` changes.

    Only whole top-level fields can be named. Status may be DRAFT or LISTED here; RETIRED is
    refused with FailedPrecondition pointing at RetireModel (the store enforces that retired
    versions stay retired).
    """
    paths = [path for path in request.update_mask.paths if path != API_KEY_PATH]
    if not paths:
        raise InvalidArgument(
            f"update_mask must name at least one of {', '.join(sorted(UPDATABLE))}"
        )
    unknown = sorted(set(paths) - UPDATABLE)
    if unknown:
        raise InvalidArgument(
            f"update_mask names {', '.join(unknown)}; "
            f"only {', '.join(sorted(UPDATABLE))} can be updated"
        )
    msg = request.model
    changes: dict[str, Any] = {}
    for path in paths:
        if path == "description":
            changes[path] = msg.description
        elif path == "endpoint":
            changes[path] = endpoint_from_proto(msg)
        elif path == "fields":
            changes[path] = tuple(field_spec_from_proto(spec) for spec in msg.fields)
        elif path == "oip_mapping":
            changes[path] = oip_mapping_from_proto(msg.oip_mapping)
        elif path == "pricing":
            changes[path] = pricing_from_proto(msg.pricing)
        else:
            status = status_from_proto(msg.status)
            if status is ModelStatus.RETIRED:
                raise FailedPrecondition("use RetireModel to retire a model version")
            changes[path] = status
    return changes

"""Conversions between ``broker.v1`` protobuf messages and the registry's domain types.

Kept apart from the servicers so that the broker service (catalogue) and the registry service
share one mapping, and so that the rest of the broker never handles generated classes. Output-only
proto fields (``ref``, times) are written on the way out and ignored on the way in. Enum zero
values follow the proto comments: RUNTIME_UNSPECIFIED is refused, MODEL_STATUS_UNSPECIFIED means
the caller's default.
"""

from __future__ import annotations

from typing import Final

from broker._proto.broker.v1 import models_pb2
from broker.errors import InvalidArgument
from broker.registry.model import (
    Endpoint,
    FieldSpec,
    ModelStatus,
    ModelVersion,
    OipMapping,
    Runtime,
    TensorInput,
    TensorOutput,
)
from broker.registry.pricing import Pricing

_RUNTIME_TO_PROTO: Final[dict[Runtime, models_pb2.Runtime.ValueType]] = {
    Runtime.OPEN_INFERENCE_GRPC: models_pb2.RUNTIME_OPEN_INFERENCE_GRPC,
    Runtime.OPENAI_HTTP: models_pb2.RUNTIME_OPENAI_HTTP,
    Runtime.SANDBOX: models_pb2.RUNTIME_SANDBOX,
}
_RUNTIME_FROM_PROTO: Final = {value: key for key, value in _RUNTIME_TO_PROTO.items()}

_STATUS_TO_PROTO: Final[dict[ModelStatus, models_pb2.ModelStatus.ValueType]] = {
    ModelStatus.DRAFT: models_pb2.MODEL_STATUS_DRAFT,
    ModelStatus.LISTED: models_pb2.MODEL_STATUS_LISTED,
    ModelStatus.RETIRED: models_pb2.MODEL_STATUS_RETIRED,
}
_STATUS_FROM_PROTO: Final = {value: key for key, value in _STATUS_TO_PROTO.items()}


def runtime_from_proto(value: int, field: str = "model.runtime") -> Runtime:
    """The domain runtime; InvalidArgument for RUNTIME_UNSPECIFIED or an unknown number."""
    try:
        return _RUNTIME_FROM_PROTO[models_pb2.Runtime.ValueType(value)]
    except KeyError:
        choices = ", ".join(models_pb2.Runtime.Name(v) for v in _RUNTIME_FROM_PROTO)
        raise InvalidArgument(f"{field} must be one of {choices}") from None


def runtime_to_proto(runtime: Runtime) -> models_pb2.Runtime.ValueType:
    """The proto enum value of ``runtime``."""
    return _RUNTIME_TO_PROTO[runtime]


def status_from_proto(
    value: int, *, default: ModelStatus | None = None, field: str = "model.status"
) -> ModelStatus:
    """The domain status; MODEL_STATUS_UNSPECIFIED gives ``default`` (InvalidArgument if None)."""
    if value == models_pb2.MODEL_STATUS_UNSPECIFIED and default is not None:
        return default
    try:
        return _STATUS_FROM_PROTO[models_pb2.ModelStatus.ValueType(value)]
    except KeyError:
        choices = ", ".join(models_pb2.ModelStatus.Name(v) for v in _STATUS_FROM_PROTO)
        raise InvalidArgument(f"{field} must be one of {choices}") from None


def status_to_proto(status: ModelStatus) -> models_pb2.ModelStatus.ValueType:
    """The proto enum value of ``status``."""
    return _STATUS_TO_PROTO[status]


def field_spec_from_proto(msg: models_pb2.FieldSpec) -> FieldSpec:
    """A declared field; an empty type means "string", as in the proto's default."""
    return FieldSpec(
        path=msg.path,
        type=msg.type or "string",
        labels=tuple(msg.labels),
        required=msg.required,
        description=msg.description,
    )


def field_spec_to_proto(spec: FieldSpec) -> models_pb2.FieldSpec:
    """The proto form of a declared field."""
    return models_pb2.FieldSpec(
        path=spec.path,
        type=spec.type,
        labels=list(spec.labels),
        required=spec.required,
        description=spec.description,
    )


def endpoint_from_proto(model: models_pb2.Model) -> Endpoint | None:
    """The model's endpoint, or None when the message does not carry one."""
    if not model.HasField("endpoint"):
        return None
    msg = model.endpoint
    return Endpoint(
        target=msg.target,
        remote_model=msg.remote_model,
        remote_version=msg.remote_version,
        tls=msg.tls,
        tls_ca_pem=msg.tls_ca_pem,
    )


def api_key_from_proto(model: models_pb2.Model) -> str:
    """The endpoint API key a vendor sent ("" when none); it never enters the domain types."""
    return model.endpoint.api_key if model.HasField("endpoint") else ""


def endpoint_to_proto(endpoint: Endpoint, *, api_key_set: bool = False) -> models_pb2.Endpoint:
    """The proto form of an endpoint: never the API key, only whether one is stored."""
    return models_pb2.Endpoint(
        target=endpoint.target,
        remote_model=endpoint.remote_model,
        remote_version=endpoint.remote_version,
        tls=endpoint.tls,
        tls_ca_pem=endpoint.tls_ca_pem,
        api_key_set=api_key_set,
    )


def oip_mapping_from_proto(msg: models_pb2.OipMapping) -> OipMapping:
    """The tensor mapping; shapes become tuples of ints."""
    return OipMapping(
        inputs=tuple(
            TensorInput(
                name=tensor.name,
                datatype=tensor.datatype,
                shape=tuple(tensor.shape),
                path=tensor.path,
                paths=tuple(tensor.paths),
            )
            for tensor in msg.inputs
        ),
        outputs=tuple(
            TensorOutput(name=out.name, path=out.path, squeeze=out.squeeze) for out in msg.outputs
        ),
    )


def oip_mapping_to_proto(mapping: OipMapping) -> models_pb2.OipMapping:
    """The proto form of a tensor mapping."""
    return models_pb2.OipMapping(
        inputs=[
            models_pb2.TensorInput(
                name=tensor.name,
                datatype=tensor.datatype,
                shape=list(tensor.shape),
                path=tensor.path,
                paths=list(tensor.paths),
            )
            for tensor in mapping.inputs
        ],
        outputs=[
            models_pb2.TensorOutput(name=out.name, path=out.path, squeeze=out.squeeze)
            for out in mapping.outputs
        ],
    )


def pricing_from_proto(msg: models_pb2.Pricing) -> Pricing:
    """The vendor's prices (checked by the registry's validation, not here)."""
    return Pricing(
        currency=msg.currency,
        per_call_micros=msg.per_call_micros,
        per_input_token_micros=msg.per_input_token_micros,
        per_output_token_micros=msg.per_output_token_micros,
        per_tensor_element_micros=msg.per_tensor_element_micros,
        per_cpu_second_micros=msg.per_cpu_second_micros,
    )


def pricing_to_proto(pricing: Pricing) -> models_pb2.Pricing:
    """The proto form of a model's prices."""
    return models_pb2.Pricing(
        currency=pricing.currency,
        per_call_micros=pricing.per_call_micros,
        per_input_token_micros=pricing.per_input_token_micros,
        per_output_token_micros=pricing.per_output_token_micros,
        per_tensor_element_micros=pricing.per_tensor_element_micros,
        per_cpu_second_micros=pricing.per_cpu_second_micros,
    )


def model_from_proto(msg: models_pb2.Model, *, vendor: str | None = None) -> ModelVersion:
    """A model version as a caller sent it.

    ``vendor`` fills in an empty ``msg.vendor`` (the caller's tenant); an unset status means
    LISTED, as the proto says. Output-only fields are ignored. Values are not validated here
    beyond the enums: the store validates the whole model.
    """
    return ModelVersion(
        vendor=msg.vendor or vendor or "",
        name=msg.name,
        version=msg.version,
        runtime=runtime_from_proto(msg.runtime),
        status=status_from_proto(msg.status, default=ModelStatus.LISTED),
        description=msg.description,
        endpoint=endpoint_from_proto(msg),
        fields=tuple(field_spec_from_proto(spec) for spec in msg.fields),
        oip_mapping=oip_mapping_from_proto(msg.oip_mapping),
        package_digest=msg.package_digest,
        pricing=pricing_from_proto(msg.pricing),
    )


def model_to_proto(mv: ModelVersion, *, api_key_set: bool = False) -> models_pb2.Model:
    """The full proto form, for the vendor who owns the model (endpoint and mapping included).

    ``api_key_set`` says whether an endpoint API key is stored (the key is never returned).
    """
    msg = models_pb2.Model(
        vendor=mv.vendor,
        name=mv.name,
        version=mv.version,
        description=mv.description,
        runtime=runtime_to_proto(mv.runtime),
        fields=[field_spec_to_proto(spec) for spec in mv.fields],
        oip_mapping=oip_mapping_to_proto(mv.oip_mapping),
        status=status_to_proto(mv.status),
        ref=mv.ref,
        package_digest=mv.package_digest,
    )
    if not mv.pricing.is_free:
        msg.pricing.CopyFrom(pricing_to_proto(mv.pricing))
    if mv.endpoint is not None:
        msg.endpoint.CopyFrom(endpoint_to_proto(mv.endpoint, api_key_set=api_key_set))
    if mv.create_time is not None:
        msg.create_time.FromDatetime(mv.create_time)
    if mv.update_time is not None:
        msg.update_time.FromDatetime(mv.update_time)
    return msg


def catalog_model_to_proto(mv: ModelVersion) -> models_pb2.CatalogModel:
    """What a buyer may see: no endpoint, no mapping, no status (the catalogue is all LISTED);
    the prices, so the buyer knows what a call costs before making it."""
    msg = models_pb2.CatalogModel(
        ref=mv.ref,
        vendor=mv.vendor,
        name=mv.name,
        version=mv.version,
        description=mv.description,
        runtime=runtime_to_proto(mv.runtime),
        fields=[field_spec_to_proto(spec) for spec in mv.fields],
        labels=list(mv.labels),
    )
    if not mv.pricing.is_free:
        msg.pricing.CopyFrom(pricing_to_proto(mv.pricing))
    return msg


def catalog_model_from_proto(msg: models_pb2.CatalogModel) -> ModelVersion:
    """A catalogue entry as a domain object (for clients): LISTED, without endpoint or mapping."""
    return ModelVersion(
        vendor=msg.vendor,
        name=msg.name,
        version=msg.version,
        runtime=runtime_from_proto(msg.runtime, "runtime"),
        status=ModelStatus.LISTED,
        description=msg.description,
        fields=tuple(field_spec_from_proto(spec) for spec in msg.fields),
        pricing=pricing_from_proto(msg.pricing),
    )

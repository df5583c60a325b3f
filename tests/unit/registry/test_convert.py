"""Proto <-> domain conversions of the registry."""

from __future__ import annotations

import dataclasses

import pytest

from broker._proto.broker.v1 import models_pb2
from broker.errors import InvalidArgument
from broker.registry.convert import (
    catalog_model_from_proto,
    catalog_model_to_proto,
    model_from_proto,
    model_to_proto,
    runtime_from_proto,
    runtime_to_proto,
    status_from_proto,
    status_to_proto,
)
from broker.registry.model import ModelStatus, OipMapping, Runtime
from tests.unit.registry.builders import NOW, oip_model


def test_model_round_trips_through_proto() -> None:
    mv = oip_model(create_time=NOW, update_time=NOW)
    msg = model_to_proto(mv)
    assert msg.ref == "acme/iris@1.0.0"
    assert msg.create_time.ToDatetime().isoformat() == "2025-03-01T12:00:00"
    back = model_from_proto(msg)
    assert back == dataclasses.replace(mv, create_time=None, update_time=None)


def test_model_without_endpoint_round_trips_to_none() -> None:
    mv = oip_model(runtime=Runtime.SANDBOX, endpoint=None, oip_mapping=OipMapping())
    msg = model_to_proto(mv)
    assert not msg.HasField("endpoint")
    assert model_from_proto(msg).endpoint is None


def test_empty_vendor_takes_the_default_and_output_fields_are_ignored() -> None:
    msg = model_to_proto(oip_model())
    msg.vendor = ""
    msg.ref = "evil/other@9"
    msg.create_time.FromDatetime(NOW)
    mv = model_from_proto(msg, vendor="tenant")
    assert mv.vendor == "tenant"
    assert mv.ref == "tenant/iris@1.0.0"
    assert mv.create_time is None


def test_empty_field_type_defaults_to_string() -> None:
    msg = model_to_proto(oip_model())
    msg.fields[1].type = ""
    assert model_from_proto(msg).fields[1].type == "string"


@pytest.mark.parametrize("runtime", list(Runtime))
def test_runtime_enum_round_trips(runtime: Runtime) -> None:
    assert runtime_from_proto(runtime_to_proto(runtime)) is runtime


@pytest.mark.parametrize("value", [models_pb2.RUNTIME_UNSPECIFIED, 99])
def test_unspecified_or_unknown_runtime_is_invalid(value: int) -> None:
    with pytest.raises(InvalidArgument, match="RUNTIME_OPEN_INFERENCE_GRPC"):
        runtime_from_proto(value)


@pytest.mark.parametrize("status", list(ModelStatus))
def test_status_enum_round_trips(status: ModelStatus) -> None:
    assert status_from_proto(status_to_proto(status)) is status


def test_unspecified_status_uses_default_or_is_invalid() -> None:
    unspecified = models_pb2.MODEL_STATUS_UNSPECIFIED
    assert status_from_proto(unspecified, default=ModelStatus.LISTED) is ModelStatus.LISTED
    with pytest.raises(InvalidArgument, match=r"model\.status"):
        status_from_proto(unspecified)
    with pytest.raises(InvalidArgument):
        status_from_proto(42)


def test_catalog_model_hides_endpoint_and_mapping() -> None:
    msg = catalog_model_to_proto(oip_model())
    assert msg.ref == "acme/iris@1.0.0"
    assert list(msg.labels) == ["measurement", "pii.email"]
    assert not hasattr(msg, "endpoint")
    back = catalog_model_from_proto(msg)
    assert back.endpoint is None
    assert back.fields == oip_model().fields
    assert back.status is ModelStatus.LISTED

"""Builders shared by the registry, storage and server tests."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

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

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def oip_model(
    vendor: str = "acme", name: str = "iris", version: str = "1.0.0", **changes: Any
) -> ModelVersion:
    """A valid Open Inference Protocol model version; ``changes`` override any field."""
    mv = ModelVersion(
        vendor=vendor,
        name=name,
        version=version,
        runtime=Runtime.OPEN_INFERENCE_GRPC,
        status=ModelStatus.LISTED,
        description="Iris classifier",
        endpoint=Endpoint(target="127.0.0.1:8081", remote_model="iris"),
        fields=(
            FieldSpec(path="/features", type="array", labels=("measurement",), required=True),
            FieldSpec(path="/customer/email", labels=("pii.email",)),
        ),
        oip_mapping=OipMapping(
            inputs=(TensorInput(name="input-0", datatype="FP32", shape=(1, 4), path="/features"),),
            outputs=(TensorOutput(name="predict", path="/class", squeeze=True),),
        ),
    )
    return dataclasses.replace(mv, **changes)


def count_versions(engine: sa.Engine) -> int:
    """How many model_versions rows exist."""
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM model_versions")).scalar_one())

"""The registry's domain types, independent of protobuf and of the database.

A ``ModelVersion`` is what the rest of the broker works with once a reference has been
resolved: where the model runs, what fields it declares, and how a payload maps to tensors.
They are frozen so that a resolved model cannot change under a call in flight.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from broker.registry.pricing import Pricing


class Runtime(enum.StrEnum):
    """How the broker reaches a model (mirrors ``broker.v1.Runtime``)."""

    OPEN_INFERENCE_GRPC = "open_inference_grpc"
    OPENAI_HTTP = "openai_http"
    SANDBOX = "sandbox"


class ModelStatus(enum.StrEnum):
    """Lifecycle of a model version (mirrors ``broker.v1.ModelStatus``)."""

    DRAFT = "draft"
    LISTED = "listed"
    RETIRED = "retired"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One declared payload field: JSON Pointer path, JSON type and data labels."""

    path: str
    type: str = "string"
    labels: tuple[str, ...] = ()
    required: bool = False
    description: str = ""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a remote model is served."""

    target: str
    remote_model: str = ""
    remote_version: str = ""
    tls: bool = False
    tls_ca_pem: str = ""


@dataclass(frozen=True, slots=True)
class TensorInput:
    """Builds one Open Inference Protocol input tensor from the payload.

    Exactly one of ``path`` (one value, scalar or nested arrays) and ``paths`` (scalars gathered
    in order) is set; both are JSON Pointers.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    path: str = ""
    paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TensorOutput:
    """Copies one output tensor into the answer at a JSON Pointer."""

    name: str
    path: str = ""
    squeeze: bool = False


@dataclass(frozen=True, slots=True)
class OipMapping:
    """JSON payload <-> Open Inference Protocol tensors."""

    inputs: tuple[TensorInput, ...] = ()
    outputs: tuple[TensorOutput, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One registered version of a vendor's model."""

    vendor: str
    name: str
    version: str
    runtime: Runtime
    status: ModelStatus = ModelStatus.LISTED
    description: str = ""
    endpoint: Endpoint | None = None
    fields: tuple[FieldSpec, ...] = ()
    oip_mapping: OipMapping = field(default_factory=OipMapping)
    create_time: datetime | None = None
    update_time: datetime | None = None
    # Content digest ("sha256:<hex>") of the package a sandbox model runs; "" for remote runtimes.
    package_digest: str = ""
    # What a call costs the buyer (issue 17); free when the vendor sets no price.
    pricing: Pricing = field(default_factory=Pricing)

    @property
    def ref(self) -> str:
        """The canonical reference ``vendor/name@version``."""
        return f"{self.vendor}/{self.name}@{self.version}"

    @property
    def labels(self) -> tuple[str, ...]:
        """Sorted union of the labels of every declared field."""
        return tuple(sorted({label for spec in self.fields for label in spec.labels}))

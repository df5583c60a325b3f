"""Database tables of the registry, and the mapping between their rows and domain types.

Three tables, so that the uniqueness rules are enforced by the database rather than by a
check-then-insert race: ``vendors`` (one row per tenant that ever published), ``models`` (unique
``(vendor_id, name)``) and ``model_versions`` (unique ``(model_id, version)``).

The endpoint, the declared fields and the OIP mapping are stored as JSON text: they are read and
written whole with their version and never queried inside, and text behaves the same on SQLite
and PostgreSQL. Times are stored in UTC; SQLite hands them back without a zone, so
``to_domain`` attaches UTC.

The schema itself is created by the Alembic revisions in ``broker/storage/migrations``; a test
checks that they match these classes.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

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

_STATUSES = ", ".join(f"'{status.value}'" for status in ModelStatus)
_RUNTIMES = ", ".join(f"'{runtime.value}'" for runtime in Runtime)


class VendorRow(SQLModel, table=True):
    """A vendor (tenant) that has registered at least one model."""

    __tablename__ = "vendors"
    __table_args__ = (sa.UniqueConstraint("name", name="uq_vendors_name"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_type=sa.String(128), nullable=False)
    create_time: datetime = Field(sa_type=sa.DateTime(timezone=True), nullable=False)


class ModelRow(SQLModel, table=True):
    """A model name within a vendor; its versions hang off it."""

    __tablename__ = "models"
    __table_args__ = (sa.UniqueConstraint("vendor_id", "name", name="uq_models_vendor_id_name"),)

    id: int | None = Field(default=None, primary_key=True)
    vendor_id: int = Field(
        nullable=False,
        sa_column_args=[
            sa.ForeignKey("vendors.id", name="fk_models_vendor_id", ondelete="RESTRICT")
        ],
    )
    name: str = Field(sa_type=sa.String(63), nullable=False)
    create_time: datetime = Field(sa_type=sa.DateTime(timezone=True), nullable=False)


class ModelVersionRow(SQLModel, table=True):
    """One registered version: everything needed to call it."""

    __tablename__ = "model_versions"
    __table_args__ = (
        sa.UniqueConstraint("model_id", "version", name="uq_model_versions_model_id_version"),
        sa.CheckConstraint(f"status IN ({_STATUSES})", name="ck_model_versions_status"),
        sa.CheckConstraint(f"runtime IN ({_RUNTIMES})", name="ck_model_versions_runtime"),
    )

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(
        nullable=False,
        sa_column_args=[
            sa.ForeignKey("models.id", name="fk_model_versions_model_id", ondelete="RESTRICT")
        ],
    )
    version: str = Field(sa_type=sa.String(64), nullable=False)
    status: str = Field(sa_type=sa.String(16), nullable=False, index=True)
    runtime: str = Field(sa_type=sa.String(32), nullable=False)
    description: str = Field(sa_type=sa.Text(), nullable=False)
    endpoint_json: str | None = Field(default=None, sa_type=sa.Text(), nullable=True)
    fields_json: str = Field(sa_type=sa.Text(), nullable=False)
    oip_mapping_json: str = Field(sa_type=sa.Text(), nullable=False)
    # "sha256:<hex>" of a sandbox model's package (revision 0003_model_packages); "" otherwise.
    package_digest: str = Field(
        default="", sa_type=sa.String(71), nullable=False, sa_column_kwargs={"server_default": ""}
    )
    # The vendor's prices as JSON (revision 0009_metering); "" for a free model.
    pricing_json: str = Field(
        default="", sa_type=sa.Text(), nullable=False, sa_column_kwargs={"server_default": ""}
    )
    create_time: datetime = Field(sa_type=sa.DateTime(timezone=True), nullable=False)
    update_time: datetime = Field(sa_type=sa.DateTime(timezone=True), nullable=False)


def new_row(model_id: int, mv: ModelVersion, now: datetime) -> ModelVersionRow:
    """A row for a version of model ``model_id`` created at ``now``."""
    return ModelVersionRow(
        model_id=model_id, version=mv.version, create_time=now, update_time=now, **_values(mv)
    )


def apply_to_row(row: ModelVersionRow, mv: ModelVersion) -> None:
    """Copy the mutable parts of ``mv`` (everything but identity and times) into ``row``."""
    for name, value in _values(mv).items():
        setattr(row, name, value)


def _values(mv: ModelVersion) -> dict[str, Any]:
    return {
        "status": mv.status.value,
        "runtime": mv.runtime.value,
        "description": mv.description,
        "endpoint_json": None if mv.endpoint is None else _dumps(_endpoint_dict(mv.endpoint)),
        "fields_json": _dumps([_field_dict(spec) for spec in mv.fields]),
        "oip_mapping_json": _dumps(_mapping_dict(mv.oip_mapping)),
        "package_digest": mv.package_digest,
        "pricing_json": "" if mv.pricing.is_free else _dumps(dataclasses.asdict(mv.pricing)),
    }


def to_domain(row: ModelVersionRow, vendor: str, name: str) -> ModelVersion:
    """Rebuild the domain object from a version row and its vendor and model names."""
    endpoint = None if row.endpoint_json is None else Endpoint(**json.loads(row.endpoint_json))
    fields = tuple(
        FieldSpec(
            path=item["path"],
            type=item["type"],
            labels=tuple(item["labels"]),
            required=item["required"],
            description=item["description"],
        )
        for item in json.loads(row.fields_json)
    )
    mapping = json.loads(row.oip_mapping_json)
    return ModelVersion(
        vendor=vendor,
        name=name,
        version=row.version,
        runtime=Runtime(row.runtime),
        status=ModelStatus(row.status),
        description=row.description,
        endpoint=endpoint,
        fields=fields,
        oip_mapping=OipMapping(
            inputs=tuple(
                TensorInput(
                    name=item["name"],
                    datatype=item["datatype"],
                    shape=tuple(item["shape"]),
                    path=item["path"],
                    paths=tuple(item["paths"]),
                )
                for item in mapping["inputs"]
            ),
            outputs=tuple(TensorOutput(**item) for item in mapping["outputs"]),
        ),
        create_time=as_utc(row.create_time),
        update_time=as_utc(row.update_time),
        package_digest=row.package_digest,
        pricing=Pricing(**json.loads(row.pricing_json)) if row.pricing_json else Pricing(),
    )


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (SQLite returns naive datetimes that are UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _endpoint_dict(endpoint: Endpoint) -> dict[str, Any]:
    return {
        "target": endpoint.target,
        "remote_model": endpoint.remote_model,
        "remote_version": endpoint.remote_version,
        "tls": endpoint.tls,
        "tls_ca_pem": endpoint.tls_ca_pem,
    }


def _field_dict(spec: FieldSpec) -> dict[str, Any]:
    return {
        "path": spec.path,
        "type": spec.type,
        "labels": list(spec.labels),
        "required": spec.required,
        "description": spec.description,
    }


def _mapping_dict(mapping: OipMapping) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": tensor.name,
                "datatype": tensor.datatype,
                "shape": list(tensor.shape),
                "path": tensor.path,
                "paths": list(tensor.paths),
            }
            for tensor in mapping.inputs
        ],
        "outputs": [
            {"name": out.name, "path": out.path, "squeeze": out.squeeze} for out in mapping.outputs
        ],
    }

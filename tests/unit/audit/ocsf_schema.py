"""The published OCSF schema as a JSON Schema validator, for the tests of the OCSF export.

The schema is the one schema.ocsf.io publishes for OCSF 1.8.0 (its ``export/schema``), as the
PyPI package ``ocsf-json-schema`` ships it (Apache-2.0 schema data; the package's README names
the download); that package turns a class plus a list of profiles into a JSON Schema (draft
2020-12) with every referenced object embedded, required attributes, types, enums, constants and
the ``at_least_one`` constraints. Nothing of the schema is copied into this repository.

What the mapping relies on was also read in the OCSF project's own source, the ocsf/ocsf-schema
repository at tag v1.8.0 (commit 6fa6499a0f8c9f449d342816e90e5f687c224b0a): API Activity (6003)
requires ``actor``, ``api`` and ``src_endpoint``; its activities are 1-4 (and 0, 99); the
``security_control`` profile adds ``action_id``, ``disposition_id``, ``policy`` and
``authorizations``; ``metadata.uid``, ``sequence`` and ``log_name`` are optional or recommended
attributes of types string, integer and string.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

from broker.audit.ocsf import OCSF_VERSION


@functools.cache
def _schema() -> OcsfJsonSchemaEmbedded:
    return OcsfJsonSchemaEmbedded(get_ocsf_schema(version=OCSF_VERSION))


@functools.cache
def validator(class_uid: int, profiles: tuple[str, ...]) -> Draft202012Validator:
    """A validator for one class with the profiles an event declares."""
    schema = _schema()
    name = schema.lookup_class_name_from_uid(class_uid=class_uid)
    json_schema = schema.get_class_schema(class_name=name, profiles=list(profiles))
    Draft202012Validator.check_schema(json_schema)
    return Draft202012Validator(json_schema)


def errors(
    event: Mapping[str, Any], *, class_uid: int = 0, profiles: tuple[str, ...] | None = None
) -> list[str]:
    """Every way ``event`` breaks the published schema of its class and profiles.

    The class and profiles are the ones the event names, unless given (a test that damages
    ``class_uid`` or ``metadata`` still validates against the schema it means).
    """
    if profiles is None:
        profiles = tuple(event.get("metadata", {}).get("profiles", []))
    check = validator(class_uid or int(event["class_uid"]), profiles)
    return sorted(
        f"{'/'.join(str(p) for p in error.absolute_path) or '(event)'}: {error.message}"
        for error in check.iter_errors(event)
    )

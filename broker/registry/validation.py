"""Checks a model version before it is stored, naming the offending field in the error.

A vendor's mistakes (a bad JSON Pointer, an OIP input with two data sources, a shape the
runtime cannot infer) are cheapest to report at registration: found at call time they would
fail a buyer's request instead. Every message starts with the field path in the request
(``oip_mapping.inputs[0].shape``) so the vendor can find it without reading broker code.
"""

from __future__ import annotations

import re
from typing import Final

from broker.errors import InvalidArgument
from broker.registry.model import (
    Endpoint,
    FieldSpec,
    ModelStatus,
    ModelVersion,
    OipMapping,
    Runtime,
)
from broker.registry.pricing import check_pricing
from broker.registry.refs import check_name, check_vendor, check_version

FIELD_TYPES: Final = frozenset({"string", "number", "integer", "boolean", "object", "array"})
# Open Inference Protocol (KServe V2) tensor datatypes.
OIP_DATATYPES: Final = frozenset(
    {
        "BOOL",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "FP16",
        "FP32",
        "FP64",
        "BYTES",
    }
)
MAX_DESCRIPTION: Final = 4096
MAX_FIELDS: Final = 1000
MAX_TENSORS: Final = 256
MAX_POINTER: Final = 1024
MAX_TARGET: Final = 2048
MAX_CA_PEM: Final = 64 * 1024

# RFC 6901: "" or a sequence of "/" + reference tokens, where "~" is only "~0" or "~1".
_POINTER_RE: Final = re.compile(r"(/([^~/]|~[01])*)*")
_LABEL_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")
_TENSOR_NAME_RE: Final = re.compile(r"[^\s]{1,256}")
_PACKAGE_DIGEST_RE: Final = re.compile(r"sha256:[0-9a-f]{64}")


def check_pointer(value: str, field: str, *, allow_empty: bool = False) -> None:
    """InvalidArgument unless ``value`` is JSON Pointer syntax (RFC 6901).

    The empty pointer means "the whole document"; it is accepted only where the proto gives it a
    meaning (a TensorOutput path, where "" means "/<name>").
    """
    if value == "" and allow_empty:
        return
    if value == "":
        raise InvalidArgument(f"{field} must be a JSON Pointer such as /customer/email")
    if len(value) > MAX_POINTER:
        raise InvalidArgument(f"{field} is longer than {MAX_POINTER} characters")
    if not _POINTER_RE.fullmatch(value):
        raise InvalidArgument(
            f"{field} is not a JSON Pointer (RFC 6901): it must start with '/' and write "
            "'~' as '~0' and '/' inside a key as '~1'"
        )


def check_status_on_register(status: ModelStatus) -> None:
    """A version is registered as DRAFT or LISTED; registering it retired makes no sense."""
    if status is ModelStatus.RETIRED:
        raise InvalidArgument("model.status must be DRAFT or LISTED when registering")


def validate_model(mv: ModelVersion) -> None:
    """Raise InvalidArgument naming the first field of ``mv`` that is not acceptable."""
    check_vendor(mv.vendor, "model.vendor")
    check_name(mv.name, "model.name")
    check_version(mv.version, "model.version")
    if len(mv.description) > MAX_DESCRIPTION:
        raise InvalidArgument(f"model.description is longer than {MAX_DESCRIPTION} characters")
    _check_fields(mv.fields)
    if mv.endpoint is not None:
        _check_endpoint(mv.endpoint)
    _check_mapping(mv.oip_mapping)
    _check_runtime(mv)
    check_pricing(mv.pricing)


def _check_runtime(mv: ModelVersion) -> None:
    remote = mv.runtime in {Runtime.OPEN_INFERENCE_GRPC, Runtime.OPENAI_HTTP}
    if remote and (mv.endpoint is None or not mv.endpoint.target):
        raise InvalidArgument(f"model.endpoint.target is required for runtime {mv.runtime.value}")
    if mv.runtime is Runtime.OPEN_INFERENCE_GRPC and not mv.oip_mapping.inputs:
        raise InvalidArgument(
            "model.oip_mapping.inputs needs at least one input tensor for runtime "
            f"{mv.runtime.value}"
        )
    if mv.runtime is Runtime.SANDBOX and not _PACKAGE_DIGEST_RE.fullmatch(mv.package_digest):
        raise InvalidArgument(
            "model.package_digest is required for runtime sandbox: the sha256:<64 hex> digest "
            "printed by `broker packages add`"
        )
    if mv.runtime is not Runtime.SANDBOX and mv.package_digest:
        raise InvalidArgument("model.package_digest applies only to runtime sandbox")
    if mv.runtime is not Runtime.OPEN_INFERENCE_GRPC and (
        mv.oip_mapping.inputs or mv.oip_mapping.outputs
    ):
        raise InvalidArgument(
            f"model.oip_mapping applies only to runtime {Runtime.OPEN_INFERENCE_GRPC.value}"
        )


def _check_fields(fields: tuple[FieldSpec, ...]) -> None:
    if len(fields) > MAX_FIELDS:
        raise InvalidArgument(f"model.fields has more than {MAX_FIELDS} entries")
    seen: set[str] = set()
    for i, spec in enumerate(fields):
        where = f"model.fields[{i}]"
        check_pointer(spec.path, f"{where}.path")
        if spec.path in seen:
            raise InvalidArgument(f"{where}.path repeats a path declared earlier")
        seen.add(spec.path)
        if spec.type not in FIELD_TYPES:
            raise InvalidArgument(f"{where}.type must be one of {', '.join(sorted(FIELD_TYPES))}")
        for j, label in enumerate(spec.labels):
            if not _LABEL_RE.fullmatch(label):
                raise InvalidArgument(
                    f"{where}.labels[{j}] must be 1 to 128 characters of letters, digits, "
                    "'.', '_', ':', '/' or '-' (for example pii.email)"
                )
        if len(spec.description) > MAX_DESCRIPTION:
            raise InvalidArgument(f"{where}.description is longer than {MAX_DESCRIPTION}")


def _check_endpoint(endpoint: Endpoint) -> None:
    target = endpoint.target
    if len(target) > MAX_TARGET or any(ch.isspace() for ch in target):
        raise InvalidArgument(
            f"model.endpoint.target must be a host:port or URL of at most {MAX_TARGET} "
            "characters without spaces"
        )
    if endpoint.tls_ca_pem and not endpoint.tls:
        raise InvalidArgument("model.endpoint.tls_ca_pem is set but model.endpoint.tls is false")
    if len(endpoint.tls_ca_pem) > MAX_CA_PEM:
        raise InvalidArgument(f"model.endpoint.tls_ca_pem is larger than {MAX_CA_PEM} bytes")


def _check_mapping(mapping: OipMapping) -> None:
    if len(mapping.inputs) > MAX_TENSORS or len(mapping.outputs) > MAX_TENSORS:
        raise InvalidArgument(f"model.oip_mapping has more than {MAX_TENSORS} tensors")
    names: set[str] = set()
    for i, tensor in enumerate(mapping.inputs):
        where = f"model.oip_mapping.inputs[{i}]"
        _check_tensor_name(tensor.name, where, names)
        if tensor.datatype not in OIP_DATATYPES:
            raise InvalidArgument(
                f"{where}.datatype must be one of {', '.join(sorted(OIP_DATATYPES))}"
            )
        if not tensor.shape:
            raise InvalidArgument(f"{where}.shape needs at least one dimension")
        if any(dim == 0 or dim < -1 for dim in tensor.shape):
            raise InvalidArgument(f"{where}.shape dimensions must be positive or -1")
        if tensor.shape.count(-1) > 1:
            raise InvalidArgument(f"{where}.shape may have at most one -1 dimension")
        if bool(tensor.path) == bool(tensor.paths):
            raise InvalidArgument(f"{where} must set exactly one of path and paths")
        if tensor.path:
            check_pointer(tensor.path, f"{where}.path")
        for j, pointer in enumerate(tensor.paths):
            check_pointer(pointer, f"{where}.paths[{j}]")
    names = set()
    for i, output in enumerate(mapping.outputs):
        where = f"model.oip_mapping.outputs[{i}]"
        _check_tensor_name(output.name, where, names)
        check_pointer(output.path, f"{where}.path", allow_empty=True)


def _check_tensor_name(name: str, where: str, seen: set[str]) -> None:
    if not _TENSOR_NAME_RE.fullmatch(name):
        raise InvalidArgument(f"{where}.name must be 1 to 256 characters without spaces")
    if name in seen:
        raise InvalidArgument(f"{where}.name repeats a tensor name used earlier")
    seen.add(name)

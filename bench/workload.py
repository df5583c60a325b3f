"""The bench's one workload: a 2 KB JSON payload with 20 fields, and the model that takes it.

Five fields are declared sensitive by the vendor's schema and hold free text; between them they
carry five detectable entities (an e-mail address, a phone number, a card number with a valid
Luhn digit, an IBAN with valid check digits and an IP address), so classification, policy and
enforcement all have real work on every call. The other fifteen fields are plain strings,
numbers and booleans, one of them padded so that the whole payload is 2,048 bytes of JSON.

The model maps every field to one tensor and every output tensor back to the field of the same
name, so the answer is as large as the request and the response direction has work too.
For the direct and proxy baselines the bench sends exactly the ``ModelInferRequest`` the broker
builds from this payload (the broker's own ``build_request``), so the three paths carry the same
bytes to the backend.
"""

from __future__ import annotations

import uuid
from typing import Any, Final

import orjson

from broker._proto.broker.v1 import broker_pb2, models_pb2
from broker._proto.inference.v2 import grpc_predict_v2_pb2 as oip
from broker.registry.convert import oip_mapping_from_proto
from broker.runtimes.oip_mapping import build_request

PAYLOAD_BYTES: Final = 2048
MODEL_NAME: Final = "bench-echo"
MODEL_VERSION: Final = "1.0.0"
VENDOR_TENANT: Final = "bench-vendor"
BUYER_TENANT: Final = "bench-buyer"
MODEL_REF: Final = f"{VENDOR_TENANT}/{MODEL_NAME}@{MODEL_VERSION}"

#: The five sensitive fields: (name, schema labels, free text with one detectable entity each).
SENSITIVE: Final = (
    ("contact_note", ("pii.contact",), "Customer asked us to write to jane.doe@example.com soon."),
    ("callback_note", ("pii.contact",), "Call back on +44 20 7946 0958 after five, not before."),
    ("payment_note", ("confidential",), "Paid with card 4111 1111 1111 1111 on the 3rd of May."),
    ("refund_note", ("finance.account",), "Refund to IBAN GB82 WEST 1234 5698 7654 32 please."),
    ("security_note", ("confidential",), "Login seen from 203.0.113.42 during the night shift."),
)

_PLAIN: Final[dict[str, Any]] = {
    "ticket_id": "T-2024-000123",
    "channel": "email",
    "language": "en",
    "product": "premium-savings",
    "region": "emea",
    "priority": 2,
    "age_days": 14,
    "message_count": 7,
    "satisfaction": 3.5,
    "sentiment": -0.25,
    "amount": 1249.99,
    "escalated": False,
    "vip": True,
    "summary": "Customer disputes a fee charged after an early withdrawal from savings.",
}
_PAD_FIELD: Final = "description"


def payload() -> dict[str, Any]:
    """The 20-field payload, padded to exactly ``PAYLOAD_BYTES`` bytes of compact JSON."""
    doc: dict[str, Any] = {name: text for name, _, text in SENSITIVE}
    doc.update(_PLAIN)
    doc[_PAD_FIELD] = ""
    filler = "The account holder explains the situation at length and asks for a review. "
    missing = PAYLOAD_BYTES - len(orjson.dumps(doc))
    doc[_PAD_FIELD] = (filler * (missing // len(filler) + 1))[:missing]
    assert len(doc) == 20 and len(orjson.dumps(doc)) == PAYLOAD_BYTES
    return doc


def payload_bytes() -> bytes:
    """The payload as the buyer sends it."""
    return orjson.dumps(payload())


def _datatype(value: Any) -> tuple[str, str]:
    """(OIP datatype, schema type) for one JSON value."""
    if isinstance(value, bool):
        return "BOOL", "boolean"
    if isinstance(value, int):
        return "INT64", "integer"
    if isinstance(value, float):
        return "FP64", "number"
    return "BYTES", "string"


def model(backend_target: str) -> models_pb2.Model:
    """The model description a vendor registers: one tensor per field, answers field by field."""
    labels = {name: list(tags) for name, tags, _ in SENSITIVE}
    fields, inputs, outputs = [], [], []
    for name, value in payload().items():
        datatype, json_type = _datatype(value)
        fields.append(
            models_pb2.FieldSpec(path=f"/{name}", type=json_type, labels=labels.get(name, []))
        )
        inputs.append(
            models_pb2.TensorInput(name=name, datatype=datatype, shape=[1], path=f"/{name}")
        )
        outputs.append(models_pb2.TensorOutput(name=f"out-{name}", path=f"/{name}", squeeze=True))
    return models_pb2.Model(
        name=MODEL_NAME,
        version=MODEL_VERSION,
        description="bench echo model: every field in, every field back",
        runtime=models_pb2.RUNTIME_OPEN_INFERENCE_GRPC,
        endpoint=models_pb2.Endpoint(target=backend_target),
        fields=fields,
        oip_mapping=models_pb2.OipMapping(inputs=inputs, outputs=outputs),
    )


def schema_labels() -> dict[str, list[str]]:
    """The vendor's declared labels by JSON Pointer, as classification receives them."""
    return {f"/{name}": list(tags) for name, tags, _ in SENSITIVE}


def infer_request_bytes() -> bytes:
    """The serialised ``ModelInferRequest`` the broker sends the backend for this payload."""
    mapping = oip_mapping_from_proto(model("unused").oip_mapping)
    request: oip.ModelInferRequest = build_request(
        mapping, payload(), model_name=MODEL_NAME, request_id=uuid.uuid4().hex
    )
    return request.SerializeToString()


def invoke_request_bytes() -> bytes:
    """The serialised ``InvokeRequest`` a buyer sends the broker."""
    return broker_pb2.InvokeRequest(model=MODEL_REF, json=payload_bytes()).SerializeToString()

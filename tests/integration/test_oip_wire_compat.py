"""Our Open Inference Protocol proto must be wire-compatible with MLServer's.

Both descriptors are dumped as JSON by the same script, MLServer's by its own virtualenv's
Python (MLServer's dependencies do not belong in the broker's), and compared field by field:
number, name, type, repetition, message type and oneof.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.mlserver

DUMP_SCRIPT = Path(__file__).with_name("dump_proto_descriptor.py")
OURS = "broker._proto.inference.v2.grpc_predict_v2_pb2"
THEIRS = "mlserver.grpc.dataplane_pb2"
SERVICE = "inference.GRPCInferenceService"

# Fields of the KServe specification that MLServer 1.7 does not declare. Protobuf parsers skip
# unknown fields, and the broker never sends inference parameters, so they cannot break a call.
SPEC_ONLY_FIELDS = {
    ("inference.InferParameter", "4"),  # double_param
    ("inference.InferParameter", "5"),  # uint64_param
}
# The messages of the inference path must match exactly, in both directions: a field MLServer
# sends that we did not declare would be dropped from an answer without a word.
EXACT = [
    "inference.ModelInferRequest",
    "inference.ModelInferRequest.InferInputTensor",
    "inference.ModelInferRequest.InferRequestedOutputTensor",
    "inference.ModelInferResponse",
    "inference.ModelInferResponse.InferOutputTensor",
    "inference.InferTensorContents",
    "inference.ModelReadyRequest",
    "inference.ModelReadyResponse",
]


def _dump(python: Path | str, module: str) -> dict[str, Any]:
    out = subprocess.run(
        [str(python), str(DUMP_SCRIPT), module],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.fixture(scope="module")
def descriptors(mlserver_venv: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    return _dump(sys.executable, OURS), _dump(mlserver_venv / "bin" / "python", THEIRS)


def test_same_package_and_service_methods(
    descriptors: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    ours, theirs = descriptors
    assert ours["package"] == theirs["package"] == "inference"
    assert set(ours["services"]) == {SERVICE}
    for method, signature in ours["services"][SERVICE].items():
        assert theirs["services"][SERVICE].get(method) == signature, method


def test_every_field_we_declare_matches_mlserver(
    descriptors: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    ours, theirs = descriptors
    problems = []
    for message, fields in ours["messages"].items():
        if message not in theirs["messages"]:
            problems.append(f"{message}: MLServer has no such message")
            continue
        for number, field in fields.items():
            other = theirs["messages"][message].get(number)
            if other is None:
                if (message, number) not in SPEC_ONLY_FIELDS:
                    problems.append(f"{message} field {number}: MLServer lacks it")
            elif other != field:
                problems.append(f"{message} field {number}: ours {field}, MLServer {other}")
    assert problems == []


@pytest.mark.parametrize("message", EXACT)
def test_inference_path_messages_are_identical(
    descriptors: tuple[dict[str, Any], dict[str, Any]], message: str
) -> None:
    ours, theirs = descriptors
    assert ours["messages"][message] == theirs["messages"][message]

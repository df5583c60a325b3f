"""Print a protobuf module's messages and services as JSON (run by test_oip_wire_compat.py).

Run with any Python that can import the module: ``python dump_proto_descriptor.py MODULE``.
It imports nothing from the broker, so MLServer's own virtualenv can run it against
``mlserver.grpc.dataplane_pb2`` and the broker's against ``broker._proto...``.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any


def _field(field: Any) -> dict[str, Any]:
    repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == 3
    return {
        "name": field.name,
        "type": field.type,
        "repeated": repeated,
        "message": field.message_type.full_name if field.message_type else None,
        "enum": field.enum_type.full_name if field.enum_type else None,
        "oneof": field.containing_oneof.name if field.containing_oneof else None,
    }


def _messages(descriptor: Any, into: dict[str, Any]) -> None:
    into[descriptor.full_name] = {str(f.number): _field(f) for f in descriptor.fields}
    for nested in descriptor.nested_types:
        _messages(nested, into)


def dump(module_name: str) -> dict[str, Any]:
    """Describe every message (nested ones included) and service of the module's file."""
    file = importlib.import_module(module_name).DESCRIPTOR
    messages: dict[str, Any] = {}
    for message in file.message_types_by_name.values():
        _messages(message, messages)
    services = {
        service.full_name: {
            method.name: {
                "input": method.input_type.full_name,
                "output": method.output_type.full_name,
                "client_streaming": method.client_streaming,
                "server_streaming": method.server_streaming,
            }
            for method in service.methods
        }
        for service in file.services_by_name.values()
    }
    return {"package": file.package, "messages": messages, "services": services}


if __name__ == "__main__":
    json.dump(dump(sys.argv[1]), sys.stdout, indent=1, sort_keys=True)

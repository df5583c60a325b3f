"""``broker health``: the operator's check, over standard gRPC health checking and reflection.

It speaks the same protocols as ``grpc_health_probe`` and ``grpcurl``, so no extra tool is
needed on the machine: the exit status is 0 only when the broker reports SERVING.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from broker.cli.common import DEFAULT_TARGET, add_tls_arguments, channel_from_args


def register(sub: Any) -> None:
    """Add ``health``."""
    parser = sub.add_parser("health", help="check a broker's health and list its services")
    parser.add_argument(
        "--target", default=os.environ.get("BROKER_TARGET", DEFAULT_TARGET), help="broker address"
    )
    parser.add_argument("--service", default="", help="service to check (default: the server)")
    parser.add_argument("--timeout", type=float, default=5.0, help="deadline in seconds")
    add_tls_arguments(parser)  # a broker serving TLS (and asking for client certificates)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the health status and the services the server offers; 0 only when SERVING."""
    with channel_from_args(args) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(
            health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
        )
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        print(f"status: {status}")
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        answer = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=args.timeout)))
        for service in sorted(s.name for s in answer.list_services_response.service):
            print(f"service: {service}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1

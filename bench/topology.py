"""The three paths under test, started as separate processes on loopback.

    (a) direct:  load generator ──────────────────────────► echo backend
    (b) proxy:   load generator ──► pass-through proxy ───► echo backend
    (c) broker:  load generator ──► broker (JWT, registry, and every stage that has landed:
                                    classification, policy, enforcement, audit) ──► echo backend

(a) and (b) send the ``ModelInferRequest`` the broker itself builds for the workload, so all
three paths deliver the same bytes to the same backend; (c) sends the buyer's ``InvokeRequest``
with a development-issuer token. The broker runs with SQLite in a temporary directory.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import grpc
import orjson

from bench import workload
from bench.load import Call
from bench.procs import ServerProcess, spawn
from broker._proto.broker.v1 import broker_pb2
from broker._proto.inference.v2 import grpc_predict_v2_pb2 as oip
from broker.auth.dev_issuer import DevIssuer
from broker.client import BrokerClient
from broker.config import Config, load_config

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
INVOKE = "/broker.v1.Broker/Invoke"
TOKEN_TTL_SECONDS = 3600


@dataclass
class Topology:
    """The running processes and the call each path sends."""

    backend: ServerProcess
    proxy: ServerProcess
    broker: ServerProcess
    calls: dict[str, Call]

    def server_of(self, path: str) -> ServerProcess:
        """The process that does the path's own work: backend, proxy or broker."""
        return {"direct": self.backend, "proxy": self.proxy, "broker": self.broker}[path]


def register_workload(config: Config, broker_target: str, backend_target: str) -> str:
    """Register the workload's model as its vendor; return a buyer token (dev issuer)."""
    issuer = DevIssuer.from_auth_config(config.auth, config.data_dir)
    vendor_token = issuer.mint(
        subject="bench-vendor-svc",
        tenant=workload.VENDOR_TENANT,
        roles=["vendor"],
        ttl_seconds=TOKEN_TTL_SECONDS,
    )
    with BrokerClient(broker_target, token=vendor_token) as client:
        client.register_model(workload.model(backend_target))
    return issuer.mint(
        subject="bench-buyer-svc",
        tenant=workload.BUYER_TENANT,
        roles=["buyer"],
        ttl_seconds=TOKEN_TTL_SECONDS,
    )


def start(stack: contextlib.ExitStack, workdir: Path) -> Topology:
    """Start backend, proxy and broker (stopped by ``stack``), register the model, check calls."""
    backend = spawn(stack, workdir, "backend")
    proxy = spawn(stack, workdir, "proxy", "--upstream", backend.target)
    broker_env = _broker_env(workdir / "broker")
    broker = spawn(stack, workdir, "broker", env=broker_env)

    buyer_token = register_workload(load_config(None, broker_env), broker.target, backend.target)

    infer = workload.infer_request_bytes()
    calls = {
        "direct": Call(backend.target, MODEL_INFER, infer),
        "proxy": Call(proxy.target, MODEL_INFER, infer),
        "broker": Call(
            broker.target,
            INVOKE,
            workload.invoke_request_bytes(),
            (("authorization", f"Bearer {buyer_token}"),),
        ),
    }
    topology = Topology(backend, proxy, broker, calls)
    _check(topology)
    return topology


def _broker_env(data_dir: Path) -> dict[str, str]:
    return {
        "BROKER__DATA_DIR": str(data_dir),
        "BROKER__SERVER__LISTEN": "127.0.0.1:0",
        "BROKER__DATABASE__URL": f"sqlite:///{data_dir / 'broker.db'}",
        "BROKER__AUTH__DEV_ISSUER__ENABLED": "true",
        "BROKER__SERVER__SHUTDOWN_GRACE_SECONDS": "1",
    }


def _check(topology: Topology) -> None:
    """One call per path, parsed: a benchmark of failing calls would measure nothing."""
    fields = len(workload.payload())
    for path, call in topology.calls.items():
        with grpc.insecure_channel(call.target) as channel:
            answer: bytes = channel.unary_unary(call.method)(
                call.request, timeout=10, metadata=call.metadata
            )
        if path == "broker":
            reply = broker_pb2.InvokeResponse.FromString(answer)
            got = len(orjson.loads(reply.json))
        else:
            got = len(oip.ModelInferResponse.FromString(answer).outputs)
        if got != fields:
            raise RuntimeError(f"{path}: expected {fields} fields back, got {got}")

"""Real servers on loopback for integration tests: a broker, and a scriptable OIP backend.

The fake backend is a real grpcio server implementing the Open Inference Protocol service. It
echoes its inputs as outputs, can be told to sleep (to test deadlines), and records which calls
it saw and which were cancelled, so tests can prove that a deadline or a departed buyer really
stopped the outbound call. Real inference is tested against MLServer separately.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from broker._proto.broker.v1 import models_pb2
from broker._proto.inference.v2 import grpc_predict_v2_pb2 as oip
from broker._proto.inference.v2 import grpc_predict_v2_pb2_grpc as oip_grpc
from broker.auth.dev_issuer import DevIssuer
from broker.client import BrokerClient
from broker.config import Config, load_config
from broker.server.app import BrokerServer, build_server


@dataclass
class BackendLog:
    """What the fake backend saw."""

    requests: list[oip.ModelInferRequest] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)  # per request, text keys
    cancelled: list[str] = field(default_factory=list)
    delay_seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class EchoInferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    """Answers ModelInfer with one output per input, same name with an ``out-`` prefix."""

    def __init__(self, log: BackendLog) -> None:
        self.log = log

    def ModelInfer(
        self, request: oip.ModelInferRequest, context: grpc.ServicerContext
    ) -> oip.ModelInferResponse:
        with self.log.lock:
            self.log.requests.append(request)
            self.log.metadata.append(
                {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
            )
        deadline = time.monotonic() + self.log.delay_seconds
        while time.monotonic() < deadline:
            if not context.is_active():
                with self.log.lock:
                    self.log.cancelled.append(request.id)
                context.abort(grpc.StatusCode.CANCELLED, "gone")
            time.sleep(0.005)
        response = oip.ModelInferResponse(model_name=request.model_name, id=request.id)
        for tensor in request.inputs:
            out = response.outputs.add(
                name=f"out-{tensor.name}", datatype=tensor.datatype, shape=tensor.shape
            )
            out.contents.CopyFrom(tensor.contents)
        return response

    def ModelReady(
        self, request: oip.ModelReadyRequest, context: grpc.ServicerContext
    ) -> oip.ModelReadyResponse:
        return oip.ModelReadyResponse(ready=True)


@dataclass
class FakeBackend:
    """A running fake OIP backend."""

    server: grpc.Server
    port: int
    log: BackendLog

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    """A fake echo OIP backend for one test (import this fixture into a conftest)."""
    backend = start_fake_backend()
    yield backend
    backend.server.stop(0)


def start_fake_backend() -> FakeBackend:
    """Start an echo OIP backend on a free loopback port."""
    log = BackendLog()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    oip_grpc.add_GRPCInferenceServiceServicer_to_server(EchoInferenceServicer(log), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return FakeBackend(server, port, log)


@dataclass
class BrokerHarness:
    """A running broker on a free port, with a development issuer to mint tokens."""

    server: BrokerServer
    config: Config
    issuer: DevIssuer
    clients: list[BrokerClient] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def token(self, tenant: str, *roles: str, subject: str | None = None, ttl: int = 600) -> str:
        return self.issuer.mint(
            subject=subject or f"{tenant}-svc", tenant=tenant, roles=list(roles), ttl_seconds=ttl
        )

    def client(self, tenant: str, *roles: str, **kwargs: Any) -> BrokerClient:
        client = BrokerClient(self.target, token=self.token(tenant, *roles), **kwargs)
        self.clients.append(client)
        return client

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)

    def stop(self) -> None:
        """Stop the server first (draining calls in flight), then close the test's clients."""
        self.server.stop(grace=5.0)
        for client in self.clients:
            client.close()


#: ``BROKER_TEST_SERVER_AIO=1`` runs every harness broker with ``[server] aio`` on, so the same
#: integration tests cover both server models.
SERVER_AIO = os.environ.get("BROKER_TEST_SERVER_AIO", "") == "1"


@pytest.fixture
def serve_with_aio(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every broker the test starts serves with ``[server] aio`` (a module's ``usefixtures``)."""
    monkeypatch.setattr(sys.modules[__name__], "SERVER_AIO", True)
    yield


def start_broker(data_dir: Path, database_url: str, **env: str) -> BrokerHarness:
    """Build and start a broker with the development issuer enabled, on a free port."""
    environ = {
        **({"BROKER__SERVER__AIO": "true"} if SERVER_AIO else {}),
        "BROKER__DATA_DIR": str(data_dir),
        "BROKER__SERVER__LISTEN": "127.0.0.1:0",
        "BROKER__DATABASE__URL": database_url,
        "BROKER__AUTH__DEV_ISSUER__ENABLED": "true",
        "BROKER__SERVER__SHUTDOWN_GRACE_SECONDS": "5",
        **env,
    }
    config = load_config(None, environ)
    server = build_server(config)
    server.start()
    return BrokerHarness(server, config, DevIssuer(config.key_dir, config.auth.dev_issuer))


def echo_model(
    target: str, *, name: str = "echo", version: str = "1.0.0", labels: tuple[str, ...] = ()
) -> models_pb2.Model:
    """A model description whose single BYTES input is the payload's ``/text`` field."""
    return models_pb2.Model(
        name=name,
        version=version,
        description="echoes its input",
        runtime=models_pb2.RUNTIME_OPEN_INFERENCE_GRPC,
        endpoint=models_pb2.Endpoint(target=target),
        fields=[models_pb2.FieldSpec(path="/text", type="string", labels=list(labels))],
        oip_mapping=models_pb2.OipMapping(
            inputs=[models_pb2.TensorInput(name="text", datatype="BYTES", shape=[1], path="/text")],
            outputs=[models_pb2.TensorOutput(name="out-text", path="/echo", squeeze=True)],
        ),
    )


def fields_echo_model(
    target: str,
    fields: dict[str, str],
    labels: dict[str, tuple[str, ...]] | None = None,
    *,
    name: str = "fields-echo",
    version: str = "1.0.0",
) -> models_pb2.Model:
    """A model with one BYTES input per field (tensor name -> JSON Pointer), echoed back.

    The echo backend answers ``out-<tensor>``; the answer puts it at ``/<tensor>``, so a test
    sees exactly what the model received and what the buyer got back for each field.
    """
    labels = labels or {}
    return models_pb2.Model(
        name=name,
        version=version,
        description="echoes each field",
        runtime=models_pb2.RUNTIME_OPEN_INFERENCE_GRPC,
        endpoint=models_pb2.Endpoint(target=target),
        fields=[
            models_pb2.FieldSpec(path=pointer, type="string", labels=list(labels.get(pointer, ())))
            for pointer in fields.values()
        ],
        oip_mapping=models_pb2.OipMapping(
            inputs=[
                models_pb2.TensorInput(name=tensor, datatype="BYTES", shape=[1], path=pointer)
                for tensor, pointer in fields.items()
            ],
            outputs=[
                models_pb2.TensorOutput(name=f"out-{tensor}", path=f"/{tensor}", squeeze=True)
                for tensor in fields
            ],
        ),
    )

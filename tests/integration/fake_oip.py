"""A fake Open Inference Protocol server (real grpcio, port 0) that misbehaves on request.

The requested model name picks the behaviour: ``slow`` waits until its context goes inactive
(and records that), ``big`` answers 100 kB, ``overloaded`` and ``picky`` fail with a status,
anything else answers one INT64 ``predict`` of 1.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from broker._proto.inference.v2 import grpc_predict_v2_pb2 as pb
from broker._proto.inference.v2 import grpc_predict_v2_pb2_grpc as pb_grpc

SECRET = 4242.4242  # a payload value that must never show up in errors or logs


@dataclass
class FakeBackend(pb_grpc.GRPCInferenceServiceServicer):
    """Behaves by the requested model name; records when a slow call's context goes inactive."""

    started: threading.Event = field(default_factory=threading.Event)
    went_inactive: threading.Event = field(default_factory=threading.Event)
    requests: list[pb.ModelInferRequest] = field(default_factory=list)

    def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.ServicerContext
    ) -> pb.ModelInferResponse:
        self.requests.append(request)
        behaviour = request.model_name
        if behaviour == "slow":
            self.started.set()
            deadline = time.monotonic() + 30
            while context.is_active() and time.monotonic() < deadline:
                time.sleep(0.005)
            if not context.is_active():
                self.went_inactive.set()
            return pb.ModelInferResponse()
        if behaviour == "big":
            tensor = pb.ModelInferResponse.InferOutputTensor(
                name="y", datatype="UINT8", shape=[100_000]
            )
            return pb.ModelInferResponse(outputs=[tensor], raw_output_contents=[bytes(100_000)])
        if behaviour == "overloaded":
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
        if behaviour == "picky":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad value {SECRET}")
        tensor = pb.ModelInferResponse.InferOutputTensor(
            name="predict",
            datatype="INT64",
            shape=[1],
            contents=pb.InferTensorContents(int64_contents=[1]),
        )
        return pb.ModelInferResponse(outputs=[tensor])


def serve(
    backend: FakeBackend, credentials: grpc.ServerCredentials | None = None
) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(backend, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, port


def self_signed() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem

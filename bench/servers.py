"""The bench's server processes: ``python -m bench.servers {backend,proxy,broker} PORT_FILE``.

Each runs in its own process so that the broker, the proxy and the backend never share a GIL
with each other or with the load generator, as in a real deployment. Each listens on loopback
only, writes its port to ``PORT_FILE`` (atomically, by rename) once it serves, and exits when
its standard input closes or on SIGTERM/SIGINT: the parent holds the other end of stdin, so
even a parent killed with SIGKILL leaves no server behind.

- ``backend``: an Open Inference Protocol echo server, one output per input, cheap on purpose.
- ``backend-aio``: the same echo on ``grpc.aio`` (one event loop), to compare server models.
- ``proxy``: the floor for any gRPC hop; a generic handler that forwards the raw request bytes
  of any method to ``--upstream`` and the raw answer back: no deserialisation, no auth. It runs
  the same grpcio sync server (16 threads) as the broker, so the two differ only in the work.
- ``broker``: the real broker, built as ``broker serve`` builds it, from ``BROKER__...``
  variables the parent sets (SQLite in a temporary directory, the development issuer).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

import grpc

from broker._proto.inference.v2 import grpc_predict_v2_pb2 as oip
from broker._proto.inference.v2 import grpc_predict_v2_pb2_grpc as oip_grpc

LOOPBACK = "127.0.0.1"
THREADS = 16  # the broker's default [server] max_workers, for a like-for-like proxy


class EchoBackend(oip_grpc.GRPCInferenceServiceServicer):
    """Answers ModelInfer with each input tensor copied to an output named ``out-<name>``."""

    def ModelInfer(  # noqa: N802 - gRPC method name
        self, request: oip.ModelInferRequest, context: grpc.ServicerContext
    ) -> oip.ModelInferResponse:
        """Echo the inputs; the broker maps ``out-<field>`` back to ``/<field>``."""
        response = oip.ModelInferResponse(model_name=request.model_name, id=request.id)
        for tensor in request.inputs:
            out = response.outputs.add(
                name=f"out-{tensor.name}", datatype=tensor.datatype, shape=tensor.shape
            )
            out.contents.CopyFrom(tensor.contents)
        return response

    def ModelReady(  # noqa: N802 - gRPC method name
        self, request: oip.ModelReadyRequest, context: grpc.ServicerContext
    ) -> oip.ModelReadyResponse:
        """Always ready."""
        return oip.ModelReadyResponse(ready=True)


class PassThrough(grpc.GenericRpcHandler):
    """Forwards every unary call's bytes to one upstream channel; the bare cost of a hop."""

    def __init__(self, upstream: str) -> None:
        self._channel = grpc.insecure_channel(upstream)
        self._calls: dict[str, grpc.UnaryUnaryMultiCallable] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        """A raw-bytes handler for any method (no serializer: bytes pass untouched)."""
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        call = self._calls.get(method)
        if call is None:
            call = self._calls.setdefault(method, self._channel.unary_unary(method))

        def forward(request: bytes, context: grpc.ServicerContext) -> bytes:
            answer: bytes = call(request, timeout=context.time_remaining())
            return answer

        return grpc.unary_unary_rpc_method_handler(forward)


def _thread_server() -> grpc.Server:
    return grpc.server(ThreadPoolExecutor(max_workers=THREADS), options=[("grpc.so_reuseport", 0)])


def _start_backend(args: argparse.Namespace) -> tuple[int, Callable[[], None]]:
    server = _thread_server()
    oip_grpc.add_GRPCInferenceServiceServicer_to_server(EchoBackend(), server)
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    server.start()
    return port, lambda: server.stop(1).wait()


class AioEchoBackend(oip_grpc.GRPCInferenceServiceServicer):
    """The echo backend's ModelInfer as a coroutine, for the grpc.aio server model."""

    async def ModelInfer(  # type: ignore[override]  # noqa: N802 - gRPC method name
        self, request: oip.ModelInferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> oip.ModelInferResponse:
        """Echo the inputs exactly as ``EchoBackend`` does."""
        return EchoBackend.ModelInfer(EchoBackend(), request, context)  # type: ignore[arg-type]


def _start_backend_aio(args: argparse.Namespace) -> tuple[int, Callable[[], None]]:
    """A grpc.aio echo server on its own event-loop thread."""
    loop = asyncio.new_event_loop()
    ready: concurrent.futures.Future[tuple[grpc.aio.Server, int]] = concurrent.futures.Future()

    async def serve() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        oip_grpc.add_GRPCInferenceServiceServicer_to_server(AioEchoBackend(), server)
        port = server.add_insecure_port(f"{LOOPBACK}:0")
        await server.start()
        ready.set_result((server, port))
        await server.wait_for_termination()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    server, port = ready.result(timeout=30)

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(server.stop(1), loop).result(timeout=10)
        thread.join(timeout=10)

    return port, stop


def _start_proxy(args: argparse.Namespace) -> tuple[int, Callable[[], None]]:
    server = _thread_server()
    server.add_generic_rpc_handlers((PassThrough(args.upstream),))
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    server.start()
    return port, lambda: server.stop(1).wait()


def _start_broker(args: argparse.Namespace) -> tuple[int, Callable[[], None]]:
    from broker.config import load_config  # noqa: PLC0415 - only this role needs the broker
    from broker.logging import configure_logging  # noqa: PLC0415
    from broker.server.app import build_server  # noqa: PLC0415
    from broker.server.workers import WorkerSupervisor  # noqa: PLC0415

    config = load_config(None, os.environ)
    if not config.server.listen.startswith(f"{LOOPBACK}:"):
        raise SystemExit("the bench broker listens on loopback only")
    configure_logging(config.logging.level, json_output=config.logging.json_output)
    workers = config.server.worker_count
    if workers > 1:  # as `broker serve` runs it: a supervisor of worker processes
        node = WorkerSupervisor(config, workers=workers)
        node.start()
        return node.port, node.stop
    server = build_server(config)
    server.start()
    return server.port, lambda: server.stop(grace=1.0)


_ROLES: dict[str, Callable[[argparse.Namespace], tuple[int, Callable[[], None]]]] = {
    "backend": _start_backend,
    "backend-aio": _start_backend_aio,
    "proxy": _start_proxy,
    "broker": _start_broker,
}


def main(argv: list[str] | None = None) -> int:
    """Start one role, publish its port, serve until stdin closes or a signal arrives."""
    parser = argparse.ArgumentParser(prog="python -m bench.servers")
    parser.add_argument("role", choices=sorted(_ROLES))
    parser.add_argument("port_file", type=Path)
    parser.add_argument("--upstream", help="proxy only: host:port to forward to")
    args = parser.parse_args(argv)

    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=_wait_for_eof, args=(done,), daemon=True).start()

    port, stop = _ROLES[args.role](args)
    tmp = args.port_file.with_suffix(".tmp")
    tmp.write_text(str(port), encoding="ascii")
    tmp.rename(args.port_file)
    done.wait()
    stop()
    return 0


def _wait_for_eof(done: threading.Event) -> None:
    """The parent holds our stdin; EOF means it is gone (even if it was killed)."""
    # os.read on the raw fd, not sys.stdin: a daemon thread blocked inside a buffered reader
    # makes interpreter shutdown abort ("could not acquire lock ... <stdin>").
    while os.read(0, 4096):
        pass
    done.set()


if __name__ == "__main__":
    raise SystemExit(main())

"""Start and stop a real MLServer serving the demo iris model, for ``make run`` and the tests.

MLServer runs from its own virtual environment (``make mlserver-env``), apart from the broker's,
because it pins packages the broker must not be tied to. The launcher trains the model with that
environment's Python (``examples/mlserver/train_iris.py``, only when no model exists yet), picks
free ports, starts ``mlserver start`` in its own process group with its output in
``<workdir>/mlserver.log``, and returns once ``ModelReady`` over gRPC says ``true``, so callers
never race the model's loading. ``stop()`` sends SIGTERM to the whole group, then SIGKILL.

Free ports are found by binding port 0 and releasing it; another process could take the port in
between, in which case MLServer fails to start and the error shows its log tail.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc

from broker._proto.inference.v2 import grpc_predict_v2_pb2 as pb
from broker._proto.inference.v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from broker.demo.child import LOG_TAIL_BYTES, ChildServer, free_port

MODEL_NAME = "iris"
"""The model name MLServer serves the demo classifier under."""

TRAIN_SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "mlserver" / "train_iris.py"


class MLServerError(RuntimeError):
    """MLServer could not be prepared or did not become ready; the message has its log tail."""


@dataclass
class MLServerProcess(ChildServer):
    """A running MLServer; use it as a context manager or call ``stop()``."""

    workdir: Path = Path()
    grpc_port: int = 0
    http_port: int = 0
    model_name: str = MODEL_NAME

    @property
    def grpc_target(self) -> str:
        """``host:port`` of the Open Inference gRPC API."""
        return f"127.0.0.1:{self.grpc_port}"

    def __enter__(self) -> MLServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_mlserver(
    venv: Path,
    workdir: Path,
    *,
    grpc_port: int = 0,
    http_port: int = 0,
    ready_timeout: float = 60.0,
    train_script: Path = TRAIN_SCRIPT,
) -> MLServerProcess:
    """Train the iris model if needed, start MLServer on the given ports (0: pick free ones).

    Returns once the model is ready; raises ``MLServerError`` (with MLServer's log tail) if the
    environment is missing, training fails, or the model is not ready within ``ready_timeout``.
    """
    venv, workdir = venv.absolute(), workdir.absolute()  # not resolve(): keep the venv's symlinks
    python, mlserver = venv / "bin" / "python", venv / "bin" / "mlserver"
    if not (python.exists() and mlserver.exists()):
        raise MLServerError(f"no MLServer environment at {venv}: run `make mlserver-env`")
    workdir.mkdir(parents=True, exist_ok=True)
    repo = workdir / "models"
    grpc_port = grpc_port or free_port()
    http_port = http_port or free_port()
    command = [str(python), str(train_script), str(repo)]
    command += ["--grpc-port", str(grpc_port), "--http-port", str(http_port)]
    trained = subprocess.run(command, capture_output=True, timeout=300, check=False)  # noqa: S603
    if trained.returncode != 0:
        tail = trained.stderr[-LOG_TAIL_BYTES:].decode("utf-8", "replace")
        raise MLServerError(f"training the demo model failed ({trained.returncode}):\n{tail}")

    log_path = workdir / "mlserver.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [str(mlserver), "start", str(repo)],
            cwd=repo,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() reaches every child
        )
    server = MLServerProcess(
        process=process,
        log_path=log_path,
        workdir=workdir,
        grpc_port=grpc_port,
        http_port=http_port,
    )
    try:
        _wait_ready(server, ready_timeout)
    except BaseException:
        server.stop(grace_seconds=5)
        raise
    return server


def _wait_ready(server: MLServerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    # Reconnect quickly: gRPC's default backoff grows to minutes while MLServer is starting.
    fast_reconnect = [
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 500),
    ]
    with grpc.insecure_channel(server.grpc_target, options=fast_reconnect) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelReadyRequest(name=server.model_name)
        while True:
            code = server.process.poll()
            if code is not None:
                raise MLServerError(
                    f"MLServer exited with status {code} before its model was ready; "
                    f"log {server.log_path}:\n{server.log_tail()}"
                )
            try:
                if stub.ModelReady(request, timeout=1.0).ready:
                    return
            except grpc.RpcError:
                pass  # not listening yet, or still loading: keep polling
            if time.monotonic() > deadline:
                raise MLServerError(
                    f"MLServer's model {server.model_name!r} was not ready after {timeout:.0f} s; "
                    f"log {server.log_path}:\n{server.log_tail()}"
                )
            time.sleep(0.2)

"""``broker demo`` (what ``make run`` starts): a broker node a newcomer can call in a minute.

It starts MLServer with the iris classifier (trained on first run from the data set that ships
inside scikit-learn), starts the broker, registers the model as ``demo-vendor/iris@1.0.0``
(pointing it at MLServer's port of this run), prints how to call it, and serves until Ctrl-C or
SIGTERM, then stops everything it started.

Slow preparations run in the background, so the broker answers within seconds on a new machine:

- the chat model (``broker.demo.chat_prepare``): builds ``.venv-llm`` with
  ``examples/llm/build.sh`` on first use (about 15 minutes the first time, progress shown, full
  log under the data dir), starts llama.cpp's OpenAI-compatible server and registers
  ``demo-vendor/smollm2-chat@1.0.0``; if any of that fails, the demo says so in one line and
  runs without it;
- the sandboxed example models (``broker.demo.sandboxed``): ``demo-vendor/iris-sandboxed``,
  ``demo-vendor/minilm-embed``, and ``demo-vendor/smollm2-sandboxed`` once the chat model's build
  has made the llama-cpp-python wheel both need.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import orjson
import sqlalchemy as sa
from google.protobuf import json_format

from broker._proto.broker.v1 import models_pb2
from broker.config import Config
from broker.console.serve import ConsoleServer, build_console_server
from broker.demo.chat_prepare import ChatPreparation
from broker.demo.llm_env import BUILD_SCRIPT
from broker.demo.mlserver import MLServerProcess, start_mlserver
from broker.demo.sandboxed import PACKAGES, DemoPackage, prepare_in_background
from broker.errors import NotFound
from broker.registry.convert import model_from_proto
from broker.registry.generation import ChangeCounter, SharedChangeCounter, slot_of
from broker.registry.model import Endpoint, ModelVersion
from broker.registry.store import RegistryStore
from broker.server.app import BrokerServer, build_server
from broker.server.workers import WorkerSupervisor
from broker.storage.db import create_engine_for

DEMO_VENDOR = "demo-vendor"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "demo"
MODEL_FILE = EXAMPLES / "iris-model.json"
CHAT_MODEL_FILE = EXAMPLES / "chat-model.json"


def demo_model(grpc_target: str, model_file: Path = MODEL_FILE) -> ModelVersion:
    """The demo model description, pointed at this run's MLServer."""
    message = json_format.ParseDict(orjson.loads(model_file.read_bytes()), models_pb2.Model())
    model = model_from_proto(message, vendor=DEMO_VENDOR)
    endpoint = model.endpoint or Endpoint(target=grpc_target)
    return dataclasses.replace(model, endpoint=dataclasses.replace(endpoint, target=grpc_target))


def chat_model(base_url: str) -> ModelVersion:
    """The demo chat model description, pointed at this run's llama.cpp server."""
    return demo_model(base_url, CHAT_MODEL_FILE)


def ensure_registered(
    store: RegistryStore, model: ModelVersion, changes: ChangeCounter | None = None
) -> ModelVersion:
    """Register the demo model, or repoint an existing registration at the new endpoint.

    ``changes``: the node's registry change counter, bumped after a repoint so that every
    worker process drops what it cached of the model (the demo writes the registry directly).
    """
    try:
        store.get(model.vendor, model.name, model.version)
    except NotFound:
        return store.register(model)
    updated = store.update(model.vendor, model.name, model.version, {"endpoint": model.endpoint})
    if changes is not None:
        changes.bump(slot_of(model.vendor, model.name))
    return updated


@dataclass
class DemoNode:
    """A demo node with what the demo started beside it.

    ``node`` is one in-process server, built and bound but not yet serving, when the config
    asks for one worker; otherwise a supervisor whose worker processes already serve.
    ``engine`` is the node's database.
    """

    node: BrokerServer | WorkerSupervisor
    engine: sa.Engine
    mlserver: MLServerProcess
    chat: ChatPreparation
    iris_ref: str
    sandboxed: threading.Thread | None  # preparing the sandboxed models; None without a sandbox
    console: ConsoleServer | None = None  # the compliance console, when [console] listen is set

    def stop(self) -> None:
        """Stop the console, the chat model's build or server and MLServer (the broker stops on
        its own)."""
        try:
            if self.console is not None:
                self.console.stop()
            self.chat.stop()
        finally:
            self.mlserver.stop()


def start_demo_node(
    config: Config,
    *,
    mlserver_venv: Path,
    llm_venv: Path,
    llm_build_script: Path = BUILD_SCRIPT,
    sandboxed: tuple[DemoPackage, ...] = PACKAGES,
) -> DemoNode:
    """Start MLServer, bind the broker, register iris, start the background preparations.

    The caller serves (``node.serve_forever()`` or ``node.start()``) and calls ``stop()``.
    """
    if not (mlserver_venv / "bin" / "mlserver").exists():
        raise OSError(f"no MLServer environment at {mlserver_venv}: run `make mlserver-env` first")
    _say("starting MLServer with the iris demo model (the first run trains it; about 10 s)")
    mlserver = start_mlserver(mlserver_venv, config.data_dir / "mlserver")
    chat: ChatPreparation | None = None
    node: BrokerServer | WorkerSupervisor | None = None
    console: ConsoleServer | None = None
    try:
        node, engine = _start_broker(config)
        changes = SharedChangeCounter.for_data_dir(config.data_dir)
        registry = RegistryStore(engine)
        model = ensure_registered(registry, demo_model(mlserver.grpc_target), changes)
        _say(f"model {model.ref} is served by MLServer at {mlserver.grpc_target}")
        _say(_quickstart(config, model.ref, node.port))
        console = _start_console(config, node.port)
        chat = ChatPreparation(
            llm_venv,
            config.data_dir / "llama",
            register=lambda url: ensure_registered(registry, chat_model(url), changes).ref,
            say=_say,
            build_script=llm_build_script,
        )
        chat.start()
        preparing = prepare_in_background(
            config, registry, DEMO_VENDOR, _say, wheels=chat.wait_for_wheels, packages=sandboxed
        )
    except BaseException:
        if console is not None:
            console.stop()
        if isinstance(node, WorkerSupervisor):
            node.stop()
        if chat is not None:
            chat.stop()
        mlserver.stop()
        raise
    return DemoNode(
        node=node,
        engine=engine,
        mlserver=mlserver,
        chat=chat,
        iris_ref=model.ref,
        sandboxed=preparing,
        console=console,
    )


def _start_console(config: Config, broker_port: int) -> ConsoleServer | None:
    """Serve the compliance console beside the demo broker (if ``[console] listen`` is set)."""
    if config.console.listen is None:
        return None
    host = config.server.listen.rpartition(":")[0].strip("[]")
    if host in {"", "0.0.0.0", "::"}:  # noqa: S104 - compared, not bound
        host = "127.0.0.1"
    console = build_console_server(config, broker_target=f"{host}:{broker_port}")
    console.start()
    _say(
        f"compliance console at {console.url}; sign in with a token from\n"
        "  .venv/bin/broker token mint --config examples/demo/broker.toml"
        " --tenant acme-bank --role compliance   (or --role admin to place holds)"
    )
    return console


def _start_broker(config: Config) -> tuple[BrokerServer | WorkerSupervisor, sa.Engine]:
    """One in-process server (bound, not yet serving), or a supervisor of serving workers."""
    workers = config.server.worker_count
    if workers == 1:
        server = build_server(config)
        return server, server.engine
    supervisor = WorkerSupervisor(config, workers=workers)
    supervisor.start()
    _say(f"the broker serves with {workers} worker processes ([server] workers)")
    return supervisor, create_engine_for(config.database_url)


def run_demo_node(config: Config, *, mlserver_venv: str, llm_venv: str = ".venv-llm") -> int:
    """Start the demo node and serve until SIGTERM or Ctrl-C; then stop all it started."""
    demo = start_demo_node(config, mlserver_venv=Path(mlserver_venv), llm_venv=Path(llm_venv))
    try:
        if isinstance(demo.node, WorkerSupervisor):
            return demo.node.serve_forever()
        demo.node.serve_forever()
        return 0
    finally:
        demo.stop()


def _quickstart(config: Config, ref: str, port: int) -> str:
    flag = "" if config.data_dir == Path("var") else f" # data dir: {config.data_dir}"
    return (
        f"broker listening on 127.0.0.1:{port}; in another terminal:\n"
        "  export BROKER_TOKEN=$(.venv/bin/broker token mint --config examples/demo/broker.toml"
        f" --tenant acme-bank --role buyer){flag}\n"
        "  .venv/bin/broker models list\n"
        f"  .venv/bin/broker call {ref} --payload examples/demo/iris-call.json\n"
        + (
            f"Prometheus metrics: curl -s http://{config.metrics.listen}/metrics | grep ^broker_\n"
            if config.metrics.listen
            else ""
        )
        + "The other demo models are prepared in the background; each says when it is callable.\n"
        "Ctrl-C stops the broker and everything the demo started."
    )


def _say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)

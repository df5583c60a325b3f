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
from google.protobuf import json_format

from broker._proto.broker.v1 import models_pb2
from broker.config import Config
from broker.demo.chat_prepare import ChatPreparation
from broker.demo.llm_env import BUILD_SCRIPT
from broker.demo.mlserver import MLServerProcess, start_mlserver
from broker.demo.sandboxed import PACKAGES, DemoPackage, prepare_in_background
from broker.errors import NotFound
from broker.registry.convert import model_from_proto
from broker.registry.model import Endpoint, ModelVersion
from broker.registry.store import RegistryStore
from broker.server.app import BrokerServer, build_server

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


def ensure_registered(store: RegistryStore, model: ModelVersion) -> ModelVersion:
    """Register the demo model, or repoint an existing registration at the new endpoint."""
    try:
        store.get(model.vendor, model.name, model.version)
    except NotFound:
        return store.register(model)
    return store.update(model.vendor, model.name, model.version, {"endpoint": model.endpoint})


@dataclass
class DemoNode:
    """A demo node, built and bound but not yet serving, with what the demo started beside it."""

    node: BrokerServer
    mlserver: MLServerProcess
    chat: ChatPreparation
    iris_ref: str
    sandboxed: threading.Thread | None  # preparing the sandboxed models; None without a sandbox

    def stop(self) -> None:
        """Stop the chat model's build or server and MLServer (the broker stops on its own)."""
        try:
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
    try:
        node = build_server(config)
        registry = RegistryStore(node.engine)
        model = ensure_registered(registry, demo_model(mlserver.grpc_target))
        _say(f"model {model.ref} is served by MLServer at {mlserver.grpc_target}")
        _say(_quickstart(config, model.ref, node.port))
        chat = ChatPreparation(
            llm_venv,
            config.data_dir / "llama",
            register=lambda base_url: ensure_registered(registry, chat_model(base_url)).ref,
            say=_say,
            build_script=llm_build_script,
        )
        chat.start()
        preparing = prepare_in_background(
            config, registry, DEMO_VENDOR, _say, wheels=chat.wait_for_wheels, packages=sandboxed
        )
    except BaseException:
        if chat is not None:
            chat.stop()
        mlserver.stop()
        raise
    return DemoNode(
        node=node, mlserver=mlserver, chat=chat, iris_ref=model.ref, sandboxed=preparing
    )


def run_demo_node(config: Config, *, mlserver_venv: str, llm_venv: str = ".venv-llm") -> None:
    """Start the demo node and serve until SIGTERM or Ctrl-C; then stop all it started."""
    demo = start_demo_node(config, mlserver_venv=Path(mlserver_venv), llm_venv=Path(llm_venv))
    try:
        demo.node.serve_forever()
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
        "The other demo models are prepared in the background; each says when it is callable.\n"
        "Ctrl-C stops the broker and everything the demo started."
    )


def _say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)

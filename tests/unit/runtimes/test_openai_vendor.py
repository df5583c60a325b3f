"""A real HTTP server on 127.0.0.1 playing an OpenAI-compatible vendor that misbehaves on request.

The standard library's server, speaking HTTP/1.1 with keep-alive; the first path segment of the
endpoint URL picks its behaviour (``http://127.0.0.1:PORT/<scenario>/v1``). Used by
``test_openai_invoke.py`` and ``test_openai_stream.py``; the module name starts with ``test_`` only
so that it lives beside them.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from broker.config import BackendsConfig
from broker.registry.model import Endpoint, ModelVersion, Runtime
from broker.runtimes.openai import (
    OpenAIRuntime,
)

API_KEY = "sk-vendor-secret-0123456789"
CHAT = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}
MiB = 1 << 20


def completion(text: str = "hello") -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }  # fmt: skip


def chunk(text: str, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
    body = {"object": "chat.completion.chunk", "choices": [choice]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


USAGE_CHUNK = b'data: {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}\n\n'


class Vendor(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: VendorServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        """Quiet."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        scenario = self.path.strip("/").split("/")[0]
        self.server.seen.append(
            (scenario, dict(self.headers), json.loads(body), self.client_address)
        )
        getattr(self, f"_{scenario}")()

    def _send(
        self, status: int, body: bytes, ctype: str = "application/json", **extra: str
    ) -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        for name, value in extra.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

    def _piece(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def _ok(self) -> None:
        self._send(200, json.dumps(completion()).encode())

    def _notjson(self) -> None:
        self._send(200, b"<html>hello</html>", "text/html")

    def _nochoices(self) -> None:
        self._send(200, b'{"object": "list"}')

    def _huge(self) -> None:
        """50 MB declared and sent: the client must give up at its cap, early."""
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(50 * 1000 * 1000))
        self.end_headers()
        self._pour()

    def _hugechunked(self) -> None:
        """50 MB without a declared length: the client must stop reading at its cap."""
        self._start_stream()
        try:
            for _ in range(50 * 1000 // 64):
                self._piece(b"x" * 64_000)
                self.server.poured += 64_000
        except OSError:
            return

    def _pour(self) -> None:
        try:
            for _ in range(50 * 1000 // 64):
                self.wfile.write(b"x" * 64_000)
                self.server.poured += 64_000
        except OSError:
            return

    def _never(self) -> None:
        self.server.release.wait(30)

    def _stream(self) -> None:
        self._start_stream()
        self._piece(b": keep-alive\n\n" + chunk("Hel") + b'data: {"choices": [{"index": 0,\n')
        self._piece(b'data: "delta": {"content": "lo"}}]}\r\n\r\n' + chunk("!", "stop"))
        self._piece(USAGE_CHUNK + b"data: [DONE]\n\n")
        self._end_stream()

    def _nodone(self) -> None:
        self._start_stream()
        self._piece(chunk("Hi") + chunk("!", "stop"))
        self._end_stream()

    def _drop(self) -> None:
        self._start_stream()
        self._piece(chunk("one ") + chunk("two ") + chunk("thr"))
        self.connection.shutdown(2)  # mid-answer, without the closing chunk

    def _cleaneof(self) -> None:
        self._start_stream()
        self._piece(chunk("one ") + chunk("two "))
        self._end_stream()

    def _malformed(self) -> None:
        self._start_stream()
        self._piece(chunk("one ") + chunk("two ") + b"data: {not json\n\n" + chunk("three"))
        self._end_stream()

    def _errorevent(self) -> None:
        self._start_stream()
        self._piece(chunk("one ") + b'data: {"error": {"message": "overloaded"}}\n\n')
        self._end_stream()

    def _hugeline(self) -> None:
        self._start_stream()
        self._piece(chunk("one "))
        try:
            for _ in range(50 * 1000 // 64):
                self._piece(b"x" * 64_000)
                self.server.poured += 64_000
        except OSError:
            return

    def _trickle(self) -> None:
        self._start_stream()
        try:
            for _ in range(300):
                self._piece(b": tick\n")
                time.sleep(0.05)
        except OSError:
            self.server.disconnected.set()

    def _slowstream(self) -> None:
        """One chunk, then waits for the client to go away, and notices when it does."""
        self._start_stream()
        self._piece(chunk("first "))
        self.connection.settimeout(10)
        with contextlib.suppress(OSError):
            self.connection.recv(1)  # returns b"" (or raises) once the client closes
        self.server.disconnected.set()

    def _wrongtype(self) -> None:
        self._send(200, json.dumps(completion()).encode())

    def __getattr__(self, name: str) -> Callable[[], None]:
        if name.startswith("_status"):
            status = int(name.removeprefix("_status"))
            return lambda: self._send(status, b'{"error": "the prompt was: hi"}', retry_after="7")
        raise AttributeError(name)


class VendorServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's default backlog of 5 resets bursts of connects

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Vendor)
        self.seen: list[tuple[str, dict[str, str], dict[str, Any], tuple[str, int]]] = []
        self.release = threading.Event()
        self.disconnected = threading.Event()
        self.poured = 0

    def model(self, scenario: str, *, remote: str = "vendor-model") -> ModelVersion:
        host, port = self.server_address[:2]
        endpoint = Endpoint(target=f"http://{host!s}:{port}/{scenario}/v1", remote_model=remote)
        return ModelVersion("acme", "chat", "1.0.0", Runtime.OPENAI_HTTP, endpoint=endpoint)


@pytest.fixture
def vendor() -> Iterator[VendorServer]:
    server = VendorServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def runtime() -> Iterator[OpenAIRuntime]:
    rt = OpenAIRuntime(BackendsConfig(max_answer_bytes=MiB), secrets=lambda _m: API_KEY)
    try:
        yield rt
    finally:
        rt.close()


def invoke(rt: OpenAIRuntime, model: ModelVersion, **kw: Any) -> dict[str, Any]:
    return rt.invoke(model, CHAT, timeout=kw.pop("timeout", 5.0), call_id="call-1", **kw)

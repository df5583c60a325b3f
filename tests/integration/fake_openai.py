"""A scriptable OpenAI-compatible chat server on loopback, for faults a real model won't produce.

It records every request (headers and JSON body) and answers ``POST /v1/chat/completions``
according to ``FakeOpenAI.script``:

- ``echo``: the last user message's content as the answer, streamed in the chunks that
  ``split`` cuts it into (a function from the text to its pieces), or as one completion;
- ``say``: ``text`` instead of the echo, split the same way;
- ``drop``: two chunks of the echo, then the connection closes without a finish reason;
- ``malformed``: one chunk, then a line that is not JSON;
- ``huge``: ``huge_bytes`` of content in 64 KiB chunks, streamed or as one completion (the
  broker must refuse it midway);
- ``hang``: headers are never sent;
- ``slow``: a chunk every 50 ms for up to 30 s (``disconnected`` is set when the reader left).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def whole(text: str) -> list[str]:
    """No split."""
    return [text]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's default backlog of 5 resets bursts of connects


@dataclass
class FakeOpenAI:
    """The server's state; tests set ``script`` and friends, then read ``requests``."""

    server: ThreadingHTTPServer
    script: str = "echo"
    text: str = ""
    split: Callable[[str], list[str]] = whole
    huge_bytes: int = 50 * 1024 * 1024
    requests: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    sent_bytes: int = 0
    disconnected: threading.Event = field(default_factory=threading.Event)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def last_user_text(self) -> str:
        messages = self.requests[-1][1]["messages"]
        return str([m for m in messages if m["role"] == "user"][-1]["content"])


def _chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> bytes:
    delta = {} if content is None else {"content": content}
    data = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "fake",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def _handler(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            fake.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            if fake.script == "hang":
                time.sleep(30)
                return
            text = fake.text if fake.script == "say" else fake.last_user_text()
            if not body.get("stream") and fake.script == "huge":
                self._huge_json()
                return
            if not body.get("stream"):
                self._json(text)
                return
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("connection", "close")
            self.end_headers()
            try:
                for line in self._events(text):
                    self.wfile.write(line)
                    self.wfile.flush()
                    fake.sent_bytes += len(line)
            except (BrokenPipeError, ConnectionResetError):
                fake.disconnected.set()
            self.close_connection = True

        def _events(self, text: str) -> Iterator[bytes]:
            pieces = fake.split(text)
            if fake.script == "drop":
                yield from (_chunk(piece) for piece in pieces[:2])
                return
            if fake.script == "malformed":
                yield _chunk(pieces[0])
                yield b"data: {not json\n\n"
                return
            if fake.script == "huge":
                block = "lorem ipsum " * 5461
                for _ in range(fake.huge_bytes // len(block) + 1):
                    yield _chunk(block)
                yield _chunk(finish="stop")
                return
            if fake.script == "slow":
                for number in range(600):
                    yield _chunk(f"word{number} ")
                    time.sleep(0.05)
                return
            yield _role()
            yield from (_chunk(piece) for piece in pieces)
            yield _chunk(finish="stop")
            usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
            yield b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        def _huge_json(self) -> None:
            """A completion whose content is ``huge_bytes`` long, sent 64 KiB at a time."""
            head = b'{"id": "chatcmpl-fake", "object": "chat.completion", "choices": [{"index": 0,'
            head += b' "message": {"role": "assistant", "content": "'
            tail = b'"}, "finish_reason": "stop"}]}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(head) + fake.huge_bytes + len(tail)))
            self.end_headers()
            block = b"lorem ipsum " * 5461
            try:
                self.wfile.write(head)
                left = fake.huge_bytes
                while left > 0:
                    piece = block[: min(left, len(block))]
                    self.wfile.write(piece)
                    fake.sent_bytes += len(piece)
                    left -= len(piece)
                self.wfile.write(tail)
            except (BrokenPipeError, ConnectionResetError):
                fake.disconnected.set()
            self.close_connection = True

        def _json(self, text: str) -> None:
            answer = {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
            }
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def _role() -> bytes:
    data = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "fake",
        "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def start_fake_openai() -> FakeOpenAI:
    """Start the fake on a free loopback port (stop it with ``stop``)."""
    server = _Server(("127.0.0.1", 0), BaseHTTPRequestHandler)
    fake = FakeOpenAI(server)
    server.RequestHandlerClass = _handler(fake)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return fake

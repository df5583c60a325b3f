"""A sandboxed model that streams, for the tests of the worker's streaming protocol.

``payload["mode"]`` picks a behaviour; a chat payload (``messages``) is echoed back as
``chat.completion.chunk`` objects a few characters at a time, so a value can be split across
chunks (as one whole completion when it asks for no stream, or says ``"whole": true``; failing
after ``"fail_after"`` chunks if it says so). Every payload's ``secret`` is remembered by the
worker, so a test can ask a worker (``history``) which secrets it has ever seen.
"""

from __future__ import annotations

import os
import stat
import struct
import time
from collections.abc import Iterator
from typing import Any

SEEN: list[str] = []
PIECE = 3  # characters per echoed chat chunk: a token or an e-mail address spans several


def answer(payload: dict[str, Any]) -> dict[str, Any] | Iterator[dict[str, Any]]:
    """The entry point: a generator for the streaming modes, an object for the others."""
    if isinstance(payload.get("secret"), str):
        SEEN.append(payload["secret"])
    if "messages" in payload:
        streams = payload.get("stream") is True and payload.get("whole") is not True
        return _chat(payload) if streams else _whole_chat(payload)
    mode = payload.get("mode")
    if mode == "history":
        return {"seen": list(SEEN)}
    if mode == "whole":
        return {"whole": True}
    return _modes(mode, payload)


def _modes(mode: Any, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    count = int(payload.get("count", 3))
    size = int(payload.get("size", 0))
    for n in range(count):
        yield {"n": n}
    if mode == "hang":  # never ends: the test reads what came before, then the deadline hits
        while True:
            time.sleep(3600)
    elif mode == "raise":
        raise ValueError("the model failed half-way")
    elif mode == "oversize":
        yield {"big": "x" * size}
    elif mode == "flood":  # chunks of ``size`` characters, without end
        while True:
            yield {"big": "x" * size}
    elif mode == "not_object":
        yield 42  # type: ignore[misc]  # on purpose: the worker must refuse it
    elif mode == "memory":
        hog = [bytearray(64 * 1024 * 1024) for _ in range(64)]
        yield {"held": len(hog)}
    elif mode == "forge":
        _forge()
    elif mode == "cpu":
        while True:
            pass


def _text(payload: dict[str, Any]) -> str:
    return str(payload["messages"][-1]["content"])


def _chat(payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    text = _text(payload)
    pieces = [text[i : i + PIECE] for i in range(0, len(text), PIECE)]
    deltas: list[dict[str, Any]] = [{"role": "assistant"}]
    deltas += [{"content": piece} for piece in pieces]
    for sent, delta in enumerate(deltas):
        if sent == payload.get("fail_after"):
            raise RuntimeError("the model failed half-way through its answer")
        yield _chunk(delta, None)
    last = _chunk({}, "stop")
    last["usage"] = {"prompt_tokens": 5, "completion_tokens": len(pieces), "total_tokens": 0}
    last["usage"]["total_tokens"] = 5 + len(pieces)
    yield last


def _chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-stream-pkg",
        "object": "chat.completion.chunk",
        "model": "stream-pkg",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _whole_chat(payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-stream-pkg",
        "object": "chat.completion",
        "model": "stream-pkg",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": _text(payload)},
                "finish_reason": "stop",
            }
        ],
    }


def _forge() -> None:
    """Announce a 1 GiB frame straight on the channel, bypassing the worker's own cap."""
    for fd in range(3, 64):
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.write(fd, struct.pack(">I", 1 << 30))
                time.sleep(30)
        except OSError:
            continue

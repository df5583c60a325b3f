"""OpenAIRuntime and the streaming answer path against a real llama.cpp server (SmolLM2-135M).

A 135M model's wording is not something to assert on, even at temperature 0 with a seed: the
tests assert on the protocol (answers, chunks, usage, cancellation) and on the pipeline's
behaviour given whatever the model said, and prove restoration whenever the model did repeat
the token.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import pytest

from broker.classify.detectors import Span, default_detector_set
from broker.enforce import transforms
from broker.errors import Cancelled, DeadlineExceeded
from broker.registry.model import Endpoint, ModelVersion, Runtime
from broker.runtimes.base import Canceller
from broker.runtimes.openai import OpenAIRuntime, usage_from_answer
from broker.streaming import (
    StreamingRestorer,
    StreamingScanner,
    TextPipeline,
    restore_text,
    run_stream,
    scan_text,
)
from tests.integration.llm_fixtures import LlamaServer

pytestmark = pytest.mark.slow
TOKEN = "TKN-7Q2M9XK4HB0RT6WZ3NPD"
DETECTORS = default_detector_set()


def chat(prompt: str, *, max_tokens: int = 24) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": prompt},
        ],
        "temperature": 0,
        "seed": 42,
        "max_tokens": max_tokens,
    }


@pytest.fixture(scope="module")
def model(llama_server: LlamaServer) -> ModelVersion:
    endpoint = Endpoint(target=llama_server.base_url, remote_model="smollm2")
    return ModelVersion("hf", "smollm2-135m", "1.0.0", Runtime.OPENAI_HTTP, endpoint=endpoint)


@pytest.fixture(scope="module")
def runtime() -> Iterator[OpenAIRuntime]:
    rt = OpenAIRuntime(secrets=lambda _m: "sk-not-checked-by-llama-cpp")
    try:
        yield rt
    finally:
        rt.close()


def test_invoke_returns_a_chat_completion_with_usage(
    model: ModelVersion, runtime: OpenAIRuntime
) -> None:
    answer = runtime.invoke(model, chat("Say hello."), timeout=60, call_id="it-1")
    message = answer["choices"][0]["message"]
    assert message["role"] == "assistant" and isinstance(message["content"], str)
    usage = usage_from_answer(answer)
    assert usage is not None and usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 24


def test_stream_returns_chunks_then_completes(model: ModelVersion, runtime: OpenAIRuntime) -> None:
    stream = runtime.stream(model, chat("Count to five."), timeout=60, call_id="it-2")
    texts = [chunk.text for chunk in stream]
    assert stream.completed and stream.delivered_chunks == len(texts) > 1
    assert "".join(texts).strip()
    assert stream.finish_reason in {"stop", "length"}


def resolve(tokens: Collection[str]) -> Mapping[str, str]:
    return {TOKEN: "Ada Lovelace"} if TOKEN in tokens else {}


def redact(span: Span, _text: str) -> str:
    return transforms.redact_marker((span.label,))


def test_a_token_the_model_repeats_is_restored_in_the_stream(
    model: ModelVersion, runtime: OpenAIRuntime
) -> None:
    # The buyer's name was tokenized on the way in; at temperature 0 and this seed SmolLM2
    # answers "Your name is TKN-...", so the token comes back in pieces across chunks.
    prompt = f"My name is {TOKEN}. What is my name?"
    stream = runtime.stream(model, chat(prompt, max_tokens=48), timeout=60, call_id="it-3")
    raw: list[str] = []

    def texts() -> Iterator[str]:
        for chunk in stream:
            raw.append(chunk.text)
            yield chunk.text

    restorer = StreamingRestorer(resolve)
    pipeline = TextPipeline([StreamingScanner(DETECTORS, redact), restorer])
    delivered = "".join(run_stream(pipeline, texts()))
    model_text = "".join(raw)
    assert delivered == restore_text(scan_text(model_text, DETECTORS, redact), resolve)[0]
    if TOKEN in model_text:
        # The model's tokenizer cuts the token into several pieces, so it arrived split across
        # chunks, and was restored all the same.
        assert not any(TOKEN in piece for piece in raw)
        assert "Ada Lovelace" in delivered and TOKEN not in delivered
        assert restorer.restored == model_text.count(TOKEN)
    else:
        assert restorer.restored == 0


def test_cancelling_mid_stream_frees_the_server(
    model: ModelVersion, runtime: OpenAIRuntime
) -> None:
    cancellers: list[Canceller] = []
    stream = runtime.stream(
        model,
        chat("Write a long story about a dragon.", max_tokens=400),
        timeout=60,
        call_id="it-4",
        on_cancel=cancellers.append,
    )
    next(stream)
    threading.Timer(0.1, cancellers[0]).start()
    with pytest.raises(Cancelled):
        for _ in stream:
            pass
    assert not stream.completed
    answer = runtime.invoke(model, chat("Say hi."), timeout=60, call_id="it-5")
    assert answer["choices"]


def test_the_deadline_stops_a_long_generation(model: ModelVersion, runtime: OpenAIRuntime) -> None:
    with pytest.raises(DeadlineExceeded):
        runtime.invoke(
            model, chat("Write a long story.", max_tokens=1000), timeout=0.5, call_id="it-6"
        )

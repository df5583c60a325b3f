"""OpenAIRuntime.invoke: request shape, pooling, usage, error mapping, size cap, deadline."""

from __future__ import annotations

import threading
import time

import pytest
import structlog

from broker.errors import (
    BackendError,
    BrokerError,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from broker.registry.model import Endpoint, ModelVersion, Runtime
from broker.runtimes.base import Canceller
from broker.runtimes.openai import OpenAIRuntime, Usage, usage_from_answer

from .test_openai_vendor import API_KEY, CHAT, MiB, VendorServer, invoke, runtime, vendor

__all__ = ["runtime", "vendor"]  # fixtures


def test_answer_usage_and_request(vendor: VendorServer, runtime: OpenAIRuntime) -> None:
    answer = invoke(runtime, vendor.model("ok"))
    assert answer["choices"][0]["message"]["content"] == "hello"
    assert usage_from_answer(answer) == Usage(12, 3, 15)
    _, headers, body, _ = vendor.seen[0]
    assert headers["authorization"] == f"Bearer {API_KEY}"
    assert "x-request-id" not in headers
    assert body == {**CHAT, "model": "vendor-model", "stream": False}


def test_the_registry_names_the_vendor_model_not_the_buyer(
    vendor: VendorServer, runtime: OpenAIRuntime
) -> None:
    runtime.invoke(vendor.model("ok"), {**CHAT, "model": "gpt-expensive", "stream": True,
                                        "stream_options": {"include_usage": True}},
                   timeout=5, call_id="c")  # fmt: skip
    body = vendor.seen[0][2]
    assert body["model"] == "vendor-model" and body["stream"] is False
    assert "stream_options" not in body


def test_connections_are_pooled(vendor: VendorServer, runtime: OpenAIRuntime) -> None:
    for _ in range(3):
        invoke(runtime, vendor.model("ok"))
    assert len({client for *_, client in vendor.seen}) == 1


def test_concurrent_calls_from_many_threads(vendor: VendorServer, runtime: OpenAIRuntime) -> None:
    errors: list[BaseException] = []

    def call() -> None:
        try:
            invoke(runtime, vendor.model("ok"))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(vendor.seen) == 16


def test_no_key_no_authorization_header(vendor: VendorServer) -> None:
    rt = OpenAIRuntime()
    try:
        invoke(rt, vendor.model("ok"))
    finally:
        rt.close()
    assert "authorization" not in vendor.seen[0][1]


@pytest.mark.parametrize(
    ("status", "error", "words"),
    [
        (400, BackendError, "rejected the call (HTTP 400)"),
        (401, BackendError, "refused the broker's credentials"),
        (403, BackendError, "refused the broker's credentials"),
        (404, BackendError, "rejected the call (HTTP 404)"),
        (408, Unavailable, "HTTP 408"),
        (422, BackendError, "HTTP 422"),
        (429, ResourceExhausted, "rate limiting"),
        (500, Unavailable, "HTTP 500"),
        (503, Unavailable, "HTTP 503"),
        (302, BackendError, "HTTP 302"),
    ],
)
def test_vendor_statuses(
    vendor: VendorServer, runtime: OpenAIRuntime, status: int, error: type[BrokerError], words: str
) -> None:
    with structlog.testing.capture_logs() as logs, pytest.raises(error) as caught:
        invoke(runtime, vendor.model(f"status{status}"))
    assert words in caught.value.message
    assert "prompt" not in caught.value.message and API_KEY not in str(logs)
    assert logs[-1]["event"] == "openai_call_failed"
    if status == 429:
        assert caught.value.details == {"retry_after": "7"}


def test_not_json_and_not_a_completion(vendor: VendorServer, runtime: OpenAIRuntime) -> None:
    with pytest.raises(BackendError, match="not JSON"):
        invoke(runtime, vendor.model("notjson"))
    with pytest.raises(BackendError, match="without choices"):
        invoke(runtime, vendor.model("nochoices"))


@pytest.mark.parametrize("scenario", ["huge", "hugechunked"])
def test_a_50_mb_answer_is_refused_without_reading_it_all(
    vendor: VendorServer, runtime: OpenAIRuntime, scenario: str
) -> None:
    with pytest.raises(BackendError, match=f"over {MiB} bytes"):
        invoke(runtime, vendor.model(scenario))
    time.sleep(0.2)
    assert vendor.poured < 20 * MiB  # the server could not push 50 MB into a closed connection


def test_a_vendor_that_never_answers_hits_the_deadline(
    vendor: VendorServer, runtime: OpenAIRuntime
) -> None:
    with pytest.raises(DeadlineExceeded):
        invoke(runtime, vendor.model("never"), timeout=0.5)


def test_the_deadline_bounds_the_whole_call_not_each_read(
    vendor: VendorServer, runtime: OpenAIRuntime
) -> None:
    """A vendor trickling a byte every 50 ms never trips a read timeout, only the deadline."""
    with pytest.raises(DeadlineExceeded):
        invoke(runtime, vendor.model("trickle"), timeout=0.6)
    assert vendor.disconnected.wait(3)


def test_cancel_abandons_a_call_blocked_on_the_vendor(
    vendor: VendorServer, runtime: OpenAIRuntime
) -> None:
    cancellers: list[Canceller] = []
    threading.Timer(0.3, lambda: cancellers[0]()).start()  # noqa: PLW0108 - list filled later
    with pytest.raises(Cancelled):
        invoke(runtime, vendor.model("never"), timeout=10, on_cancel=cancellers.append)
    cancellers[0]()  # late and repeated cancels are harmless
    invoke(runtime, vendor.model("ok"))  # and the pool still works


def test_unreachable_and_misconfigured_endpoints(runtime: OpenAIRuntime) -> None:
    def model(target: str, *, tls: bool = False) -> ModelVersion:
        return ModelVersion("a", "m", "1", Runtime.OPENAI_HTTP, endpoint=Endpoint(target, tls=tls))

    with pytest.raises(Unavailable, match="unreachable"):
        invoke(runtime, model("http://127.0.0.1:1/v1"))
    with pytest.raises(FailedPrecondition):
        invoke(runtime, model("ftp://127.0.0.1/v1"))
    with pytest.raises(FailedPrecondition):
        invoke(runtime, model("http://127.0.0.1:1/v1", tls=True))
    with pytest.raises(FailedPrecondition):
        invoke(runtime, ModelVersion("a", "m", "1", Runtime.OPENAI_HTTP))


@pytest.mark.parametrize(
    "payload",
    [{}, {"messages": []}, {"messages": "hi"}, {"messages": [{"role": "wizard", "content": "x"}]}],
)
def test_requests_that_no_chat_endpoint_accepts(
    vendor: VendorServer, runtime: OpenAIRuntime, payload: dict[str, object]
) -> None:
    with pytest.raises(InvalidArgument):
        runtime.invoke(vendor.model("ok"), payload, timeout=5, call_id="c")
    assert vendor.seen == []


def test_no_time_left_and_closed_runtime(vendor: VendorServer, runtime: OpenAIRuntime) -> None:
    with pytest.raises(DeadlineExceeded):
        invoke(runtime, vendor.model("ok"), timeout=0)
    runtime.close()
    with pytest.raises(Unavailable, match="shut down"):
        invoke(runtime, vendor.model("ok"))


def test_usage_from_answers_that_lack_it() -> None:
    assert usage_from_answer({}) is None
    assert usage_from_answer({"usage": None}) is None
    assert usage_from_answer({"usage": {"prompt_tokens": True, "completion_tokens": 1}}) is None
    assert usage_from_answer({"usage": {"prompt_tokens": 2, "completion_tokens": 1}}) == Usage(
        2, 1, 3
    )

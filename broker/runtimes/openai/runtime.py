"""Dispatch to a remote model over the OpenAI-compatible chat completions API.

Speaks ``POST {base}/chat/completions`` as vLLM, llama.cpp's server, Ollama, TGI and OpenAI do;
``tests/integration/test_openai_llama.py`` runs it against a real llama.cpp server.

The registry's ``Endpoint.target`` is the base URL including the API prefix (for example
``http://10.0.0.5:8000/v1``); ``Endpoint.remote_model`` (or the model's name) is sent as
``model``, whatever the buyer put there, because the registry, not the buyer, decides which of
the vendor's models this registration means. ``tls_ca_pem`` pins the CA for ``https`` targets.

Why it is built this way:

- **One pooled ``httpx.Client`` per (scheme, host, port, CA)**, created on first use and shared
  by every call and thread, so calls reuse keep-alive connections instead of paying a TCP and
  TLS handshake each.
- **The caller's remaining deadline bounds the whole call**, not just each socket read: the
  shared ``DeadlineWatcher`` abandons the request when it runs out, so a vendor that trickles
  one byte a second cannot hold a buyer's call past its deadline.
- **No retries, no redirects**: inference is not idempotent, and a redirect could carry the API
  key to a host the registry never named.
- **Cancellation reaches the vendor**: the canceller handed to ``on_cancel`` shuts the call's
  socket down, which stops the generation on servers that watch for disconnects (llama.cpp,
  vLLM) and frees the worker thread at once (see ``transport``).
- **Answers are bounded**: a non-streamed answer over ``max_answer_bytes`` is refused as soon as
  its ``Content-Length`` says so, or as soon as that many bytes have been read, never buffered
  whole; a stream is bounded line by line and in total (see ``stream``).
- **The API key** comes from the injected ``secrets`` callable (the keyring, in the server) at
  each call, so a rotated key takes effect at once; it goes into the ``Authorization`` header
  and nowhere else: not in logs, errors, or anything returned.

Errors map as in ``broker.runtimes.openai.errors``. Usage for the audit entry: see
``broker.runtimes.openai.types``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import httpx
import orjson

from broker.config import BackendsConfig
from broker.errors import (
    BackendError,
    BrokerError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
)
from broker.logging import get_logger
from broker.observability import tracing
from broker.registry.model import ModelVersion
from broker.runtimes.base import Canceller
from broker.runtimes.openai.errors import error_for_abort, error_for_status, error_for_transport
from broker.runtimes.openai.stream import ChatStream
from broker.runtimes.openai.transport import (
    AbortReason,
    CallGuard,
    DeadlineWatcher,
    Watch,
    guarded,
    new_client,
)

_log = get_logger(__name__)

SecretLookup = Callable[[ModelVersion], "str | None"]
"""Returns the vendor API key for a model (None: the endpoint needs none). Never logged."""

_DEADLINES = DeadlineWatcher()
"""One watcher thread for every runtime instance in the process (started on first use)."""

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


class _PoolKey(NamedTuple):
    scheme: str
    host: str
    port: int | None
    ca_pem: str


class OpenAIRuntime:
    """``Runtime`` for chat models behind an OpenAI-compatible HTTP API, plus ``stream``.

    Thread-safe: one instance serves the whole process. ``close()`` closes every pooled
    client; calls made afterwards fail with ``Unavailable``.
    """

    def __init__(
        self,
        config: BackendsConfig | None = None,
        *,
        secrets: SecretLookup | None = None,
        include_stream_usage: bool = True,
        max_connections: int = 64,
    ) -> None:
        self._config = config or BackendsConfig()
        self._secrets: SecretLookup = secrets or (lambda _model: None)
        self._include_stream_usage = include_stream_usage
        self._max_connections = max_connections
        self._lock = threading.Lock()
        self._clients: dict[_PoolKey, httpx.Client] = {}
        self._closed = False

    def invoke(
        self,
        model: ModelVersion,
        payload: dict[str, Any],
        *,
        timeout: float,
        call_id: str,
        on_cancel: Callable[[Canceller], None] | None = None,
        tenant: str = "",
    ) -> dict[str, Any]:
        """Send one chat request and return the vendor's chat completion JSON object.

        ``tenant`` is not sent: the vendor learns nothing about which buyer is calling.
        """
        request, client = self._prepare(model, payload, stream=False, timeout=timeout)
        guard, timer = self._watch(timeout, on_cancel)
        started = time.monotonic()
        try:
            with guarded(guard):
                response = client.send(request, stream=True)
                try:
                    if not response.is_success:
                        raise error_for_status(model.ref, response)
                    body = self._read_capped(model.ref, response)
                finally:
                    guard.finish()
                    response.close()
        except httpx.HTTPError as exc:
            error = self._map(model, guard, exc, timeout)
            self._log_failure(model, call_id, error, started)
            raise error from exc
        except BrokerError as error:
            self._log_failure(model, call_id, error, started)
            raise
        finally:
            timer.cancel()
            guard.finish()
        if guard.reason is not None:
            # The answer landed just as the deadline passed or the caller left: nobody reads it.
            raise error_for_abort(model.ref, guard.reason)
        answer = _json_object(body)
        if answer is None:
            raise BackendError(f"model backend {model.ref} sent an answer that is not JSON")
        if not isinstance(answer.get("choices"), list):
            raise BackendError(f"model backend {model.ref} sent an answer without choices")
        _log.debug(
            "openai_call_done",
            call_id=call_id,
            model=model.ref,
            latency_ms=round((time.monotonic() - started) * 1000, 3),
        )
        return answer

    def stream(
        self,
        model: ModelVersion,
        payload: dict[str, Any],
        *,
        timeout: float,
        call_id: str,
        on_cancel: Callable[[Canceller], None] | None = None,
        tenant: str = "",
    ) -> ChatStream:
        """Start a streamed chat completion; errors before the first chunk raise here.

        The returned ``ChatStream`` yields ``ChatChunk`` objects as the vendor sends them and
        records ``usage``, ``delivered_chunks`` and ``completed`` for the audit entry.
        """
        request, client = self._prepare(model, payload, stream=True, timeout=timeout)
        guard, timer = self._watch(timeout, on_cancel)
        started = time.monotonic()
        try:
            with guarded(guard):
                response = client.send(request, stream=True)
        except httpx.HTTPError as exc:
            timer.cancel()
            guard.finish()
            error = self._map(model, guard, exc, timeout)
            self._log_failure(model, call_id, error, started)
            raise error from exc
        content_type = response.headers.get("content-type", "")
        failure: BrokerError | None = None
        if not response.is_success:
            failure = error_for_status(model.ref, response)
        elif not content_type.startswith("text/event-stream"):
            failure = BackendError(f"model backend {model.ref} did not answer with a stream")
        if failure is not None:
            timer.cancel()
            guard.finish()
            response.close()
            self._log_failure(model, call_id, failure, started)
            raise failure
        return ChatStream(
            ref=model.ref,
            call_id=call_id,
            response=response,
            guard=guard,
            timer=timer,
            max_bytes=self._config.max_answer_bytes,
            started=started,
        )

    def close(self) -> None:
        """Close every pooled client; the runtime refuses calls afterwards."""
        with self._lock:
            self._closed = True
            clients = list(self._clients.values())
            self._clients.clear()
        for client in clients:
            client.close()

    def _prepare(
        self,
        model: ModelVersion,
        payload: dict[str, Any],
        *,
        stream: bool,
        timeout: float,
    ) -> tuple[httpx.Request, httpx.Client]:
        endpoint = model.endpoint
        if endpoint is None or not endpoint.target:
            raise FailedPrecondition(f"model {model.ref} has no OpenAI-compatible endpoint")
        _check_chat_request(payload)
        body = dict(payload)
        body["model"] = endpoint.remote_model or model.name
        body["stream"] = stream
        if stream and self._include_stream_usage:
            options = body.get("stream_options")
            merged = dict(options) if isinstance(options, dict) else {}
            merged["include_usage"] = True
            body["stream_options"] = merged
        else:
            body.pop("stream_options", None)
        try:
            url = httpx.URL(endpoint.target.rstrip("/") + "/chat/completions")
        except httpx.InvalidURL as exc:
            raise FailedPrecondition(f"model {model.ref} has an unusable endpoint URL") from exc
        if url.scheme not in ("http", "https") or (endpoint.tls and url.scheme != "https"):
            raise FailedPrecondition(f"model {model.ref} has an unusable endpoint URL")
        # No X-Request-ID with the call id: llama.cpp's Python server refuses (HTTP 400) any
        # that is not a UUID, and the call id correlates through our own logs anyway.
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
        }
        key = self._secrets(model)
        if key:
            headers["authorization"] = f"Bearer {key}"
        tracing.inject(headers)  # the trace goes on to the vendor (when tracing is on)
        client = self._client(_PoolKey(url.scheme, url.host, url.port, endpoint.tls_ca_pem))
        limits = httpx.Timeout(
            max(timeout, 0.001),
            connect=max(min(self._config.connect_timeout_seconds, timeout), 0.001),
        )
        request = client.build_request(
            "POST", url, content=orjson.dumps(body), headers=headers, timeout=limits
        )
        return request, client

    def _watch(
        self, timeout: float, on_cancel: Callable[[Canceller], None] | None
    ) -> tuple[CallGuard, Watch]:
        if timeout <= 0:
            raise DeadlineExceeded("no time left to call the model")
        guard = CallGuard()
        timer = _DEADLINES.watch(guard, timeout)
        if on_cancel is not None:
            on_cancel(lambda: guard.abort(AbortReason.CANCELLED))
        return guard, timer

    def _client(self, key: _PoolKey) -> httpx.Client:
        with self._lock:
            if self._closed:
                raise Unavailable("the OpenAI-compatible runtime is shut down")
            client = self._clients.get(key)
            if client is None:
                client = new_client(ca_pem=key.ca_pem, max_connections=self._max_connections)
                client.timeout = httpx.Timeout(self._config.default_timeout_seconds)
                self._clients[key] = client
            return client

    def _read_capped(self, ref: str, response: httpx.Response) -> bytes:
        """Read the body, refusing it as soon as it is known to exceed the cap."""
        limit = self._config.max_answer_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise BackendError(f"model backend {ref} sent an answer over {limit} bytes")
        parts: list[bytes] = []
        total = 0
        for block in response.iter_bytes():
            total += len(block)
            if total > limit:
                raise BackendError(f"model backend {ref} sent an answer over {limit} bytes")
            parts.append(block)
        return b"".join(parts)

    def _map(
        self, model: ModelVersion, guard: CallGuard, exc: httpx.HTTPError, timeout: float
    ) -> BrokerError:
        if guard.reason is not None:
            return error_for_abort(model.ref, guard.reason)
        if self._closed:
            return Unavailable("the OpenAI-compatible runtime is shut down")
        limited = timeout <= self._config.connect_timeout_seconds
        return error_for_transport(model.ref, exc, connect_limited_by_deadline=limited)

    @staticmethod
    def _log_failure(model: ModelVersion, call_id: str, error: BrokerError, started: float) -> None:
        _log.warning(
            "openai_call_failed",
            call_id=call_id,
            model=model.ref,
            status=error.code.name,
            reason=error.log_reason,
            latency_ms=round((time.monotonic() - started) * 1000, 3),
        )


def _check_chat_request(payload: dict[str, Any]) -> None:
    """Refuse what no chat endpoint accepts, before it costs a vendor round trip.

    Only the shape is checked (messages with known roles); the vendor validates the rest. The
    messages' content is never echoed in the error.
    """
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidArgument("a chat request needs a non-empty 'messages' list")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise InvalidArgument(f"messages[{index}] needs a known 'role'")


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None

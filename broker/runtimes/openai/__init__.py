"""The OpenAI-compatible chat runtime: ``OpenAIRuntime`` and what its calls hand back.

``OpenAIRuntime.invoke`` keeps the ``broker.runtimes.base.Runtime`` contract;
``OpenAIRuntime.stream`` adds server-sent-event streaming for ``Broker/InvokeStream``.
"""

from broker.runtimes.openai.runtime import OpenAIRuntime, SecretLookup
from broker.runtimes.openai.sse import ServerSentEvent, SSEDecoder, SSEError, iter_events
from broker.runtimes.openai.stream import ChatStream
from broker.runtimes.openai.types import (
    ChatChunk,
    StreamInterrupted,
    StreamMalformed,
    Usage,
    usage_from_answer,
)

__all__ = [
    "ChatChunk",
    "ChatStream",
    "OpenAIRuntime",
    "SSEDecoder",
    "SSEError",
    "SecretLookup",
    "ServerSentEvent",
    "StreamInterrupted",
    "StreamMalformed",
    "Usage",
    "iter_events",
    "usage_from_answer",
]

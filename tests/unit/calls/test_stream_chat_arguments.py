"""Chat payloads through the policy: tool-call arguments opened, enforced field by field, closed.

Also the stream chunk rewriter: allow-listed fields, per-channel pipelines, flush on finish.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import Any

import orjson
import pytest

from broker.calls.chat import close_tool_arguments, open_tool_arguments
from broker.calls.stream_chunks import ChunkRewriter
from broker.classify.classifier import classify
from broker.classify.detectors import Span, default_detector_set
from broker.enforce import transforms
from broker.enforce.keys import TenantKeys
from broker.streaming import ciphertext_opener

CARD = "4111 1111 1111 1111"


def request(arguments: str) -> dict[str, Any]:
    call = {"id": "c1", "type": "function", "function": {"name": "pay", "arguments": arguments}}
    return {
        "messages": [
            {"role": "system", "content": "You pay bills."},
            {"role": "user", "content": "Pay it, mail ada@example.com"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "paid by ada@example.com"},
        ]
    }


def test_valid_arguments_are_opened_into_labelled_fields_and_closed_again() -> None:
    payload = request(orjson.dumps({"card": CARD, "amount": 12}).decode())
    opened = open_tool_arguments(payload)
    assert opened.opened == (("messages", 2, "tool_calls", 0, "function", "arguments"),)
    schema = {"/messages/*/tool_calls/*/function/arguments/card": ["pci.card"]}
    fields = {f.pointer: f for f in classify(opened.payload, schema_labels=schema).fields}
    card = fields["/messages/2/tool_calls/0/function/arguments/card"]
    assert "pci.card" in card.labels and card.spans
    assert "pii.email" in fields["/messages/1/content"].labels  # user text
    assert "pii.email" in fields["/messages/3/content"].labels  # tool result
    # the original is untouched; closing serialises the (enforced) object back to a string
    assert isinstance(payload["messages"][2]["tool_calls"][0]["function"]["arguments"], str)
    opened.payload["messages"][2]["tool_calls"][0]["function"]["arguments"]["card"] = "****"
    closed = close_tool_arguments(opened.payload, opened.opened)
    arguments = closed["messages"][2]["tool_calls"][0]["function"]["arguments"]
    assert orjson.loads(arguments) == {"card": "****", "amount": 12}


def test_invalid_json_arguments_stay_one_text_leaf_that_detectors_scan() -> None:
    payload = request("{'card': '" + CARD + "'")  # single quotes and truncated: not JSON
    opened = open_tool_arguments(payload)
    assert opened.opened == () and opened.payload is payload
    pointer = "/messages/2/tool_calls/0/function/arguments"
    leaf = next(f for f in classify(payload).fields if f.pointer == pointer)
    assert leaf.type == "string" and "pci.card" in leaf.labels


def test_scalars_and_too_deep_arguments_are_not_opened() -> None:
    assert open_tool_arguments(request("42")).opened == ()
    deep = "[" * 40 + "]" * 40
    assert open_tool_arguments(request(deep)).opened == ()


def test_answer_tool_calls_are_opened_too() -> None:
    answer = {
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "tool_calls": [{"function": {"name": "f", "arguments": '{"to": "x@y.org"}'}}],
                },
            }
        ]
    }
    opened = open_tool_arguments(answer)
    assert opened.opened == (("choices", 0, "message", "tool_calls", 0, "function", "arguments"),)
    closed = close_tool_arguments(opened.payload, opened.opened)
    arguments = closed["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert orjson.loads(arguments) == {"to": "x@y.org"}


def test_non_chat_payloads_are_untouched() -> None:
    payload = {"text": "hello", "items": [{"arguments": "{}"}]}
    assert open_tool_arguments(payload).payload is payload


class _Vault:
    def __init__(self, known: Mapping[str, str]) -> None:
        self.known = known

    def resolve(self, tenant: str, scope: str, tokens: Collection[str]) -> dict[str, str]:
        return {t: self.known[t] for t in tokens if t in self.known}


def _redact(span: Span, _text: str) -> str:
    return transforms.redact_marker((span.label,))


def _rewriter(known: Mapping[str, str] | None = None, field_action: str = "allow") -> ChunkRewriter:
    vault: Any = _Vault(known or {})
    return ChunkRewriter(
        default_detector_set(), _redact, vault, "t", "c", field_action=field_action
    )


def _chunk(content: str | None = None, finish: str | None = None, **delta: Any) -> dict[str, Any]:
    if content is not None:
        delta["content"] = content
    choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": {"x": content}}
    return {"id": "i", "object": "chat.completion.chunk", "choices": [choice], "extra": "no"}


def _text(chunks: list[dict[str, Any] | None]) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content", "") for c in chunks if c and c["choices"]
    )


def test_rewriter_restores_split_tokens_and_flushes_at_finish() -> None:
    token = "TKN-0123456789ABCDEFGHJK"
    rewriter = _rewriter({token: "Ada"})
    text = f"Hello {token}, mail a@b.co now"
    out = [rewriter.rewrite(_chunk(ch)) for ch in text]
    out.append(rewriter.rewrite(_chunk(finish="stop")))
    assert _text(out) == "Hello Ada, mail [REDACTED:pii.email] now"
    assert rewriter.restored == 1
    last = out[-1]
    assert last is not None and last["choices"][0]["finish_reason"] == "stop"
    for chunk in out:
        if chunk is not None:
            assert "extra" not in chunk and "logprobs" not in chunk["choices"][0]


def test_rewriter_polices_tool_call_argument_fragments() -> None:
    rewriter = _rewriter()
    head = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "pay"}}
    out = [rewriter.rewrite(_chunk(tool_calls=[head]))]
    for piece in ['{"card": "4111 1111', ' 1111 1111"}']:
        call = {"index": 0, "function": {"arguments": piece}}
        out.append(rewriter.rewrite(_chunk(tool_calls=[call])))
    out.append(rewriter.rewrite(_chunk(finish="tool_calls")))
    arguments = "".join(
        call.get("function", {}).get("arguments", "")
        for chunk in out
        if chunk
        for call in chunk["choices"][0]["delta"].get("tool_calls", [])
    )
    assert arguments == '{"card": "[REDACTED:pci.card]"}'


def test_rewriter_redacts_the_whole_text_when_the_field_is_not_allowed() -> None:
    rewriter = _rewriter(field_action="redact")
    out = [rewriter.rewrite(_chunk(word)) for word in ("one ", "two ", "three ")]
    out.append(rewriter.flush())
    assert _text(out) == "[REDACTED:answer]"


def test_rewriter_drops_chunks_with_nothing_to_say() -> None:
    rewriter = _rewriter()
    assert rewriter.rewrite({"choices": [{"index": 0, "delta": {}}]}) is None
    assert rewriter.rewrite({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}})


def test_rewriter_opens_this_calls_ciphertexts_in_content_and_tool_arguments() -> None:
    keys = TenantKeys(os.urandom(32))
    mine = transforms.encrypt_value(keys.key("t", "encrypt"), keys.key_id, "t", "Ada")
    other = transforms.encrypt_value(keys.key("t", "encrypt"), keys.key_id, "t", "Bob")
    vault: Any = _Vault({})
    rewriter = ChunkRewriter(
        default_detector_set(), _redact, vault, "t", "c",
        ciphertexts={mine}, opener=ciphertext_opener(keys, "t"),
    )  # fmt: skip
    text = f"Hi {mine}, not {other}."
    out = [rewriter.rewrite(_chunk(text[i : i + 4])) for i in range(0, len(text), 4)]
    arguments = f'{{"name": "{mine}"}}'
    for i in range(0, len(arguments), 3):
        call = {"index": 0, "function": {"arguments": arguments[i : i + 3]}}
        out.append(rewriter.rewrite(_chunk(tool_calls=[call])))
    out.append(rewriter.rewrite(_chunk(finish="stop")))
    assert _text(out) == f"Hi Ada, not {other}."
    sent = "".join(
        call.get("function", {}).get("arguments", "")
        for chunk in out
        if chunk
        for call in chunk["choices"][0]["delta"].get("tool_calls", [])
    )
    assert sent == '{"name": "Ada"}'
    assert rewriter.restored == 2


def test_rewriter_wants_ciphertexts_and_their_opener_together() -> None:
    vault: Any = _Vault({})
    with pytest.raises(ValueError, match="together"):
        ChunkRewriter(default_detector_set(), _redact, vault, "t", "c", ciphertexts={"enc:v1:x"})

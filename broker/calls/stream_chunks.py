"""Rewrite a vendor's ``chat.completion.chunk`` objects into what the buyer may see.

Two jobs, both for ``broker.calls.stream``:

- **Allow-list the chunk.** Only fields the broker knows to be value-free or policed are passed
  on: ``id``, ``object``, ``created``, ``model``, ``system_fingerprint``; per choice its
  ``index``, ``finish_reason`` and a ``delta`` of ``role``, ``content`` and ``tool_calls``
  (``index``, ``id``, ``type``, ``function.name``, ``function.arguments``); and ``usage``
  counts. Anything else a vendor adds (``logprobs``, which repeat the text token by token;
  ``reasoning_content``; extensions) could carry text past the policy, so it is dropped.
- **Police the text.** Every text channel (the content of each choice, the arguments of each
  tool call) has its own ``TextPipeline``: ``StreamingScanner`` applies the answer-side entity
  actions, then ``StreamingRestorer`` restores the buyer's tokens of this call, then (when the
  call encrypted request values) ``CiphertextRestorer`` opens the ciphertexts it issued. A
  channel is flushed when its choice reports a ``finish_reason`` (into that chunk, before the
  reason) or when the stream ends.

Text held back by a pipeline simply shows up in a later chunk; a chunk left with nothing to
say (no text, role, tool-call header, finish reason or usage) is not sent at all.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Final

from broker.classify.detectors import DetectorSet, Span
from broker.enforce import transforms
from broker.enforce.keys import TenantKeys
from broker.enforce.vault import TokenVault, new_token
from broker.policy import Plan
from broker.runtimes.openai import usage_from_answer
from broker.streaming import (
    CiphertextRestorer,
    EntityAction,
    Opener,
    StreamingRestorer,
    StreamingScanner,
    TextPipeline,
    TextStage,
    vault_resolver,
)

_TOP_LEVEL: Final = ("id", "object", "created", "model", "system_fingerprint")
_CONTENT: Final = -1  # channel key of a choice's content; tool calls use their index


def entity_action(plan: Plan, keys: TenantKeys, tenant: str) -> EntityAction:
    """The answer-side entity actions of ``plan`` as a scanner callback.

    As in ``Invoke``'s answer path: ``sandbox`` becomes ``redact`` (the recipient is the buyer,
    and fail closed), and a token issued here is not stored, so it is never restored.
    """

    def act(span: Span, text: str) -> str:  # noqa: PLR0911 - one return per action
        action = plan.entities.get(span.label, plan.default_action)
        kind = action.kind
        if kind == "allow":
            return text
        if kind == "drop":
            return ""
        if kind == "mask":
            keep = action.keep_last if action.keep_last is not None else 4
            return transforms.mask(text, keep_last=keep, char=action.char or "*")
        if kind == "hash":
            return transforms.pseudonym(keys.key(tenant, "hash"), text)
        if kind == "encrypt":
            return transforms.encrypt_value(keys.key(tenant, "encrypt"), keys.key_id, tenant, text)
        if kind == "tokenize":
            return new_token()
        return transforms.redact_marker((span.label,))

    return act


class ChunkRewriter:
    """One stream's chunks in, the buyer's chunks out (not thread-safe: one per stream)."""

    def __init__(
        self,
        detectors: DetectorSet,
        action: EntityAction,
        vault: TokenVault,
        tenant: str,
        call_id: str,
        *,
        field_action: str = "allow",
        ciphertexts: Collection[str] = (),
        opener: Opener | None = None,
    ) -> None:
        """``ciphertexts``: those this call issued; ``opener`` opens them (both or neither)."""
        if bool(ciphertexts) != (opener is not None):
            raise ValueError("ciphertexts and opener go together")
        self._detectors = detectors
        self._action = action
        self._resolve = vault_resolver(vault, tenant, call_id)
        self._field_action = field_action
        self._ciphertexts = frozenset(ciphertexts)
        self._opener = opener
        self._channels: dict[tuple[int, int], TextPipeline] = {}
        self._restorers: list[StreamingRestorer | CiphertextRestorer] = []
        self._suppressed: set[tuple[int, int]] = set()
        self._delivered: list[str] = []

    @property
    def restored(self) -> int:
        """How many of the buyer's tokens and ciphertexts were restored, over every channel."""
        return sum(restorer.restored for restorer in self._restorers)

    def take_delivered(self) -> list[str]:
        """The texts released since the last call (for the audit digest), in order."""
        texts, self._delivered = self._delivered, []
        return texts

    def rewrite(self, data: Mapping[str, Any]) -> dict[str, Any] | None:
        """The buyer's version of one vendor chunk, or None when it has nothing to carry."""
        choices: list[dict[str, Any]] = []
        raw_choices = data.get("choices")
        for choice in raw_choices if isinstance(raw_choices, list) else []:
            if isinstance(choice, Mapping):
                rewritten = self._choice(choice)
                if rewritten is not None:
                    choices.append(rewritten)
        usage = usage_from_answer(data)
        if not choices and usage is None:
            return None
        out = self._header(data)
        out["choices"] = choices
        if usage is not None:
            out["usage"] = usage.as_audit()
        return out

    def flush(self) -> dict[str, Any] | None:
        """Release what every open channel still holds (the stream ended), as one chunk."""
        choices: dict[int, dict[str, Any]] = {}
        for index in sorted({key[0] for key in self._channels}):
            delta: dict[str, Any] = {}
            self._flush_choice(index, delta)
            if delta:
                choices[index] = {"index": index, "delta": delta, "finish_reason": None}
        if not choices:
            return None
        return {"object": "chat.completion.chunk", "choices": list(choices.values())}

    def _header(self, data: Mapping[str, Any]) -> dict[str, Any]:
        return {
            key: data[key]
            for key in _TOP_LEVEL
            if key in data and isinstance(data[key], str | int) and not isinstance(data[key], bool)
        }

    def _choice(self, choice: Mapping[str, Any]) -> dict[str, Any] | None:
        index = _index(choice.get("index"), 0)
        raw = choice.get("delta")
        delta = raw if isinstance(raw, Mapping) else {}
        out: dict[str, Any] = {}
        if isinstance(delta.get("role"), str):
            out["role"] = delta["role"]
        content = delta.get("content")
        if isinstance(content, str) and content:
            text = self._feed((index, _CONTENT), content)
            if text:
                out["content"] = text
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            rewritten = [
                self._tool_call(index, position, call)
                for position, call in enumerate(calls)
                if isinstance(call, Mapping)
            ]
            kept = [call for call in rewritten if len(call) > 1]
            if kept:
                out["tool_calls"] = kept
        finish = choice.get("finish_reason")
        if isinstance(finish, str):
            self._flush_choice(index, out)
        elif not out:
            return None
        return {
            "index": index,
            "delta": out,
            "finish_reason": finish if isinstance(finish, str) else None,
        }

    def _tool_call(self, choice: int, position: int, call: Mapping[str, Any]) -> dict[str, Any]:
        number = _index(call.get("index"), position)
        out: dict[str, Any] = {"index": number}
        for key in ("id", "type"):
            if isinstance(call.get(key), str):
                out[key] = call[key]
        function = call.get("function")
        if isinstance(function, Mapping):
            piece: dict[str, Any] = {}
            if isinstance(function.get("name"), str):
                piece["name"] = function["name"]
            arguments = function.get("arguments")
            if isinstance(arguments, str) and arguments:
                text = self._feed((choice, number), arguments)
                if text:
                    piece["arguments"] = text
            if piece:
                out["function"] = piece
        return out

    def _flush_choice(self, index: int, delta: dict[str, Any]) -> None:
        for key in sorted(k for k in self._channels if k[0] == index):
            pipeline = self._channels.pop(key)
            rest = self._released(key, pipeline.finish())
            if not rest:
                continue
            if key[1] == _CONTENT:
                delta["content"] = delta.get("content", "") + rest
                continue
            calls: list[dict[str, Any]] = delta.setdefault("tool_calls", [])
            same = [call for call in calls if call.get("index") == key[1]]
            call: dict[str, Any] = same[0] if same else {"index": key[1]}
            if not same:
                calls.append(call)
            function = call.setdefault("function", {})
            function["arguments"] = function.get("arguments", "") + rest

    def _feed(self, key: tuple[int, int], text: str) -> str:
        pipeline = self._channels.get(key)
        if pipeline is None:
            pipeline = self._channels[key] = TextPipeline(self._stages())
        return self._released(key, pipeline.feed(text))

    def _stages(self) -> list[TextStage]:
        """A new channel's stages: the policy first, then the buyer's own values back."""
        tokens = StreamingRestorer(self._resolve)
        stages: list[TextStage] = [StreamingScanner(self._detectors, self._action), tokens]
        self._restorers.append(tokens)
        if self._opener is not None:
            opened = CiphertextRestorer(self._ciphertexts, self._opener)
            self._restorers.append(opened)
            stages.append(opened)
        return stages

    def _released(self, key: tuple[int, int], text: str) -> str:
        """Apply a non-``allow`` field action to released text, and note what is delivered."""
        if self._field_action != "allow" and text:
            if self._field_action == "drop" or key in self._suppressed:
                return ""
            self._suppressed.add(key)
            text = transforms.redact_marker(("answer",))
        if text:
            self._delivered.append(text)
        return text


def _index(value: Any, default: int) -> int:
    return (
        value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default
    )

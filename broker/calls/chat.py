"""Chat payloads through the policy: tool-call arguments opened for classification, then closed.

A chat request (``messages`` with roles system/user/assistant/tool) is classified like any other
payload: every ``content`` string is a leaf, detectors find entities in it, and the vendor's
schema labels (``/messages/*/content``) and the buyer's labels apply. Tool results are
``role: tool`` messages whose ``content`` is text, so they need nothing special.

Tool-call arguments are the exception: the OpenAI chat format carries them as a *JSON string*
(``tool_calls[].function.arguments``, and the legacy ``function_call.arguments``). Left as one
string, a policy could not label ``/messages/*/tool_calls/*/function/arguments/card_number``
and a field action would hit the whole argument text. So, before classification,
``open_tool_arguments`` parses each such string into the JSON object or array it holds, the
classifier sees its fields under the ``arguments`` path, the enforcer acts on them field by
field, and ``close_tool_arguments`` serialises them back to a string, as the vendor expects.

**Arguments that are not valid JSON** (models do emit truncated or single-quoted "JSON"), or
that hold a scalar rather than an object or array, or that are deeper or wider than
``MAX_ARGUMENT_DEPTH`` / ``MAX_ARGUMENT_FIELDS``, stay a string: the whole string is one text
leaf, so the detectors scan it and entity actions apply to the spans they find, and a field
label on ``.../arguments`` applies to the whole string. Nothing is lost; only field-level
labels *inside* the arguments cannot apply to text that has no fields.

The same holds for answers (``choices[].message.tool_calls[].function.arguments``), where the
buyer's tokens are restored inside the opened arguments before they are closed again.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import orjson

from broker.calls.payload import JsonObject

MAX_ARGUMENT_DEPTH: Final = 32
MAX_ARGUMENT_FIELDS: Final = 2_000

Location = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class OpenedChat:
    """A copy of a payload with its tool-call arguments parsed, and where they were."""

    payload: JsonObject
    opened: tuple[Location, ...]


def open_tool_arguments(payload: JsonObject) -> OpenedChat:
    """Parse every tool-call ``arguments`` JSON string of a chat request or answer.

    Returns the payload unchanged (not copied) when it holds no argument to open, which is
    the case for every non-chat payload.
    """
    found = [loc for loc in _argument_locations(payload) if _openable(_peek(payload, loc))]
    if not found:
        return OpenedChat(payload, ())
    copy = _deep_copy(payload)
    opened: list[Location] = []
    for location in found:
        parsed = _parse(_get(copy, location))
        if parsed is not None:
            _set(copy, location, parsed)
            opened.append(location)
    return OpenedChat(copy, tuple(opened)) if opened else OpenedChat(payload, ())


def close_tool_arguments(payload: JsonObject, opened: tuple[Location, ...]) -> JsonObject:
    """Serialise the opened arguments of ``payload`` (modified in place) back to JSON strings.

    A location whose value the policy dropped entirely is left absent.
    """
    for location in opened:
        try:
            value = _get(payload, location)
        except (KeyError, IndexError, TypeError):
            continue
        if not isinstance(value, str):
            _set(payload, location, orjson.dumps(value).decode())
    return payload


def _argument_locations(payload: JsonObject) -> Iterator[Location]:
    for list_key, holder in (("messages", None), ("choices", "message")):
        items = payload.get(list_key)
        if not isinstance(items, list):
            continue
        for index, item in enumerate(items):
            message = item.get(holder) if holder and isinstance(item, dict) else item
            if not isinstance(message, dict):
                continue
            base: Location = (list_key, index, holder) if holder else (list_key, index)
            calls = message.get("tool_calls")
            if isinstance(calls, list):
                for number, call in enumerate(calls):
                    if isinstance(call, dict) and isinstance(call.get("function"), dict):
                        yield (*base, "tool_calls", number, "function", "arguments")
            if isinstance(message.get("function_call"), dict):
                yield (*base, "function_call", "arguments")


def _openable(value: Any) -> bool:
    return isinstance(value, str) and value.lstrip()[:1] in ("{", "[")


def _parse(text: str) -> dict[str, Any] | list[Any] | None:
    """The object or array ``text`` holds, or None (then it stays one text leaf)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict | list) or not _within_limits(value):
        return None
    return value


def _within_limits(value: Any) -> bool:
    fields = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_ARGUMENT_DEPTH:
            return False
        children = list(node.values()) if isinstance(node, dict) else node
        fields += 1 if not children else 0
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
            else:
                fields += 1
        if fields > MAX_ARGUMENT_FIELDS:
            return False
    return True


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _deep_copy(child) for key, child in value.items()}
    if isinstance(value, list):
        return [_deep_copy(child) for child in value]
    return value


def _peek(document: Any, location: Location) -> Any:
    try:
        return _get(document, location)
    except (KeyError, IndexError, TypeError):
        return None


def _get(document: Any, location: Location) -> Any:
    node = document
    for token in location:
        node = node[token]
    return node


def _set(document: Any, location: Location, value: Any) -> None:
    _get(document, location[:-1])[location[-1]] = value

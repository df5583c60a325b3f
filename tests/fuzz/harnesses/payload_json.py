"""Payload JSON bytes -> limits -> classification, and the buyer's labels that come with them.

The input is ``<payload JSON>`` optionally followed by ``\\x00<labels JSON>`` (a raw NUL cannot
occur in valid JSON text, so it cannot hide a payload byte): the labels object is what the
``labels`` map of an ``InvokeRequest`` carries (``{path: [label, ...]}``). Exercises orjson's
edge cases as the broker meets them (deep nesting, huge numbers, invalid UTF-8, lone surrogates,
duplicate keys), the depth and field limits, the walk and every detector on every string.
"""

from __future__ import annotations

from typing import Any

import orjson

from tests.fuzz.harnesses._support import instrumented, main

with instrumented():
    from broker.calls.payload import PayloadLimits, parse_json_payload
    from broker.classify.classifier import classify
    from broker.classify.walk import walk
    from broker.errors import InvalidArgument

#: ``parse_json_payload`` and ``classify`` report bad payloads and bad label keys or names as
#: ``InvalidArgument`` (``PointerError`` is one); nothing else is expected.
EXPECTED = (InvalidArgument,)

LIMITS = PayloadLimits(max_bytes=64 * 1024, max_depth=64, max_fields=2_000)


def _labels(raw: bytes) -> dict[str, Any]:
    """The labels part as the gRPC layer would deliver it: a map of string to string list."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {
        key: [v for v in labels if isinstance(v, str)]
        for key, labels in value.items()
        if isinstance(labels, list)
    }


def fuzz_one(data: bytes) -> None:
    """Parse, check and classify one payload; check what the walk promises."""
    body, _, labels = data.partition(b"\x00")
    try:
        payload = parse_json_payload(body, LIMITS)
        result = classify(payload, buyer_labels=_labels(labels))
    except EXPECTED:
        return
    leaves = list(walk(payload))
    assert len(result.fields) == len(leaves) <= LIMITS.max_fields
    for info, leaf in zip(result.fields, leaves, strict=True):
        assert info.pointer == leaf.pointer
        for span in info.spans:
            text = leaf.value if isinstance(leaf.value, str) else str(leaf.value)
            assert 0 <= span.start < span.end <= len(text), span


if __name__ == "__main__":
    main(fuzz_one)

"""classify(): label unions, pointer and shape-path keys, spans, and no values in the output."""

from __future__ import annotations

from typing import Any

import pytest

from broker.classify.classifier import Classification, FieldInfo, classify
from broker.classify.detectors import TRUNCATED, DetectorSet, Span, all_detectors
from broker.classify.paths import PointerError
from broker.errors import InvalidArgument

PAYLOAD: dict[str, Any] = {
    "customer": {"email": "mei@example.cn", "note": "call 138 1234 5678", "a.b": 7},
    "items": [{"note": "card 4111 1111 1111 1111"}, {"note": "nothing here"}],
    "*": {"": True},
    "account": 4111111111111111,
}


def by_pointer(result: Classification) -> dict[str, FieldInfo]:
    return {f.pointer: f for f in result.fields}


def test_detected_labels_and_spans() -> None:
    fields = by_pointer(classify(PAYLOAD))
    assert fields["/customer/email"].labels == {"pii.email"}
    assert fields["/customer/email"].spans == (Span("pii.email", 0, 14),)
    assert fields["/customer/note"].spans == (Span("pii.phone", 5, 18),)
    assert fields["/items/0/note"].shape_path == "/items/*/note"
    assert fields["/items/1/note"].labels == frozenset()
    assert fields["/*/"].shape_path == "/~2/"  # key "*", then the empty key
    assert fields["/*/"].type == "boolean"


def test_integers_are_scanned_as_their_decimal_text() -> None:
    field = by_pointer(classify(PAYLOAD))["/account"]
    assert field.type == "number"
    assert field.labels == {"pci.card"}
    assert field.spans == (Span("pci.card", 0, 16),)


def test_labels_are_the_union_of_schema_buyer_and_detected() -> None:
    result = classify(
        PAYLOAD,
        schema_labels={"/customer/email": ["contact"], "/items/*/note": ["free_text"]},
        buyer_labels={"/customer/email": ["confidential"], "/items/0/note": ["reviewed"]},
    )
    fields = by_pointer(result)
    assert fields["/customer/email"].labels == {"contact", "confidential", "pii.email"}
    assert fields["/items/0/note"].labels == {"free_text", "reviewed", "pci.card"}
    assert fields["/items/1/note"].labels == {"free_text"}
    assert result.unmatched_keys == ()


def test_a_key_labels_every_leaf_below_it() -> None:
    fields = by_pointer(classify(PAYLOAD, buyer_labels={"/customer": ["pii"], "": ["call"]}))
    assert "pii" in fields["/customer/a.b"].labels
    assert "pii" not in fields["/account"].labels
    assert all("call" in f.labels for f in fields.values())


def test_dotted_and_bracketed_keys_are_not_paths() -> None:
    payload = {"a.b": "x", "a": {"b": "y"}, "c[0]": "z", "c": ["w"]}
    fields = by_pointer(
        classify(payload, buyer_labels={"/a.b": ["dotted"], "/c[0]": ["bracketed"]})
    )
    assert fields["/a.b"].labels == {"dotted"}
    assert fields["/a/b"].labels == frozenset()
    assert fields["/c[0]"].labels == {"bracketed"}
    assert fields["/c/0"].labels == frozenset()


def test_literal_star_key_versus_any_index() -> None:
    payload = {"obj": {"*": "literal"}, "arr": ["element"]}
    result = classify(payload, buyer_labels={"/obj/~2": ["star_key"], "/arr/*": ["any"]})
    fields = by_pointer(result)
    assert fields["/obj/*"].labels == {"star_key"}
    assert fields["/arr/0"].labels == {"any"}
    # "/obj/*" read as a shape path would mean "any index of obj", but obj is an object;
    # read as a pointer it names the key "*": that is the reading that matches.
    fields = by_pointer(classify(payload, buyer_labels={"/obj/*": ["by_pointer"]}))
    assert fields["/obj/*"].labels == {"by_pointer"}


def test_unmatched_keys_are_reported() -> None:
    result = classify(PAYLOAD, schema_labels={"/nope": ["x"], "/items/*/gone": ["y"]})
    assert result.unmatched_keys == ("/items/*/gone", "/nope")


def test_entities_list_pointers_per_detected_label() -> None:
    result = classify(PAYLOAD, buyer_labels={"/customer": ["pii"]})
    assert result.entities == {
        "pii.email": ["/customer/email"],
        "pii.phone": ["/customer/note"],
        "pci.card": ["/items/0/note", "/account"],
    }


def test_no_value_appears_in_the_output() -> None:
    canary = "canary-7f3e@example.com"
    result = classify({"k": f"mail {canary} now", "n": 13812345678})
    assert "canary" not in repr(result)
    assert "13812345678" not in repr(result)


def test_truncated_strings_get_the_truncated_label() -> None:
    detectors = DetectorSet(all_detectors(), max_scan_chars=10)
    field = by_pointer(classify({"long": "x" * 11}, detectors=detectors))["/long"]
    assert field.labels == {TRUNCATED}
    assert field.spans == (Span(TRUNCATED, 10, 11),)


@pytest.mark.parametrize("key", ["a/b", "/~x", "/a*b~3"])
def test_malformed_label_keys_are_refused(key: str) -> None:
    with pytest.raises(PointerError):
        classify(PAYLOAD, buyer_labels={key: ["x"]})


@pytest.mark.parametrize("label", ["", "has space", "-lead", "x" * 200])
def test_malformed_label_names_are_refused(label: str) -> None:
    with pytest.raises(InvalidArgument):
        classify(PAYLOAD, buyer_labels={"/customer": [label]})


def test_a_single_string_label_is_accepted() -> None:
    fields = by_pointer(classify(PAYLOAD, buyer_labels={"/account": "secret_ish"}))
    assert "secret_ish" in fields["/account"].labels


def test_deep_payload_with_labels() -> None:
    deep: Any = "13812345678"
    for _ in range(10_000):
        deep = {"k": deep}
    result = classify(deep, buyer_labels={"/k/k": ["top"]})
    (field,) = result.fields
    assert field.labels == {"top", "pii.phone"}


def test_unlabelled_leaves_share_their_field_info_and_say_the_same() -> None:
    payload = {"a": 1, "b": [True, None], "c": "plain", "mail": "x jane.doe@example.com"}
    first, again = classify(payload, buyer_labels={"/c": ["x"]}), classify(payload)
    by_path = {f.pointer: f for f in first.fields}
    assert by_path["/a"] == FieldInfo("/a", "/a", "number", frozenset(), ())
    assert by_path["/b/1"] == FieldInfo("/b/1", "/b/*", "null", frozenset(), ())
    assert by_path["/c"].labels == {"x"}
    assert by_path["/mail"].labels == {"pii.email"}
    again_by_path = {f.pointer: f for f in again.fields}
    assert again_by_path["/a"] is by_path["/a"]
    assert again_by_path["/c"].labels == frozenset()  # the labelled one was not shared
    long_key = "k" * 300
    assert classify({long_key: 1}).fields[0] == FieldInfo(
        f"/{long_key}", f"/{long_key}", "number", frozenset(), ()
    )
    assert classify({long_key: 1}).fields[0] is not classify({long_key: 1}).fields[0]

"""Model references: parsing, printing and the messages for malformed ones."""

from __future__ import annotations

import pytest

from broker.errors import InvalidArgument
from broker.registry.refs import ModelRef, not_found


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("acme/iris@1.0.0", ModelRef("acme", "iris", "1.0.0")),
        ("acme/iris", ModelRef("acme", "iris", None)),
        (
            "Acme.Corp_1/iris-v2.small@2.0.0+build.7",
            ModelRef("Acme.Corp_1", "iris-v2.small", "2.0.0+build.7"),
        ),
    ],
)
def test_parse_valid_refs(text: str, expected: ModelRef) -> None:
    ref = ModelRef.parse(text)
    assert ref == expected
    assert str(ref) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("iris", "vendor/name@version"),
        ("acme/", "vendor/name@version"),
        ("/iris", "vendor/name@version"),
        ("acme/iris@", "vendor/name@version"),
        ("acme/Iris@1", "model name must be"),
        ("acme/iris@1/2", "version must be"),
        ("ac me/iris", "vendor must be"),
        ("acme/iris@-1", "version must be"),
        ("acme/" + "a" * 64, "model name must be"),
        ("a" * 400, "longer than"),
    ],
)
def test_parse_rejects_malformed_refs(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        ModelRef.parse(text)


def test_long_input_is_not_echoed_whole() -> None:
    text = "x" * 300
    with pytest.raises(InvalidArgument) as caught:
        ModelRef.parse(text)
    assert text not in str(caught.value)


def test_field_name_appears_in_messages() -> None:
    with pytest.raises(InvalidArgument, match=r"^model must look like"):
        ModelRef.parse("nope", field="model")


def test_require_version() -> None:
    assert ModelRef("acme", "iris", "1").require_version() == "1"
    with pytest.raises(InvalidArgument, match='"acme/iris@<version>"'):
        ModelRef("acme", "iris").require_version()


def test_not_found_message_is_the_same_for_hidden_and_absent() -> None:
    assert not_found(ModelRef("acme", "iris", "1")) == "model acme/iris@1 not found"

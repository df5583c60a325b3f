"""CiphertextRestorer: this call's ciphertexts, split anywhere, are opened as in the whole text."""

from __future__ import annotations

import os

import pytest

from broker.enforce import transforms
from broker.enforce.keys import TenantKeys
from broker.streaming import (
    CiphertextRestorer,
    StreamingRestorer,
    TextPipeline,
    ciphertext_opener,
    open_ciphertexts,
)

from .splits import every_single_split, random_splits, stream_through

KEYS = TenantKeys(os.urandom(32))
OTHER_KEYS = TenantKeys(os.urandom(32))


def encrypt(value: object, tenant: str = "bank", keys: TenantKeys = KEYS) -> str:
    return transforms.encrypt_value(keys.key(tenant, "encrypt"), keys.key_id, tenant, value)


NAME = encrypt("Ada Lovelace")
NUMBER = encrypt(4242)
LONG = encrypt("x" * 300)
ISSUED = (NAME, NUMBER, LONG)
SAME_TENANT_OTHER_CALL = encrypt("from an earlier call")  # opens, but was not issued here
OTHER_TENANT = encrypt("other bank's secret", tenant="other-bank")
OTHER_KEY = encrypt("another master key", keys=OTHER_KEYS)
ALTERED = NAME[:-3] + ("A" if NAME[-3] != "A" else "B") + NAME[-2:]
OPEN = ciphertext_opener(KEYS, "bank")

TEXTS = [
    "",
    "no ciphertext here, but plenty of e, en, enc and enc:v1 fragments: enc:v1",
    NAME,
    f"Hello {NAME}, your number is {NUMBER}.",
    f"{NAME}{NAME}",  # adjacent: the first is followed by 'e', not a base64url character
    f"{NAME} {NAME}:{NUMBER}",
    f"too long {NAME}X and {NUMBER}_ stay; too short {NAME[:-1]} stays",
    f"others stay: {SAME_TENANT_OTHER_CALL} {OTHER_TENANT} {OTHER_KEY} {ALTERED}",
    f"enc:v1:enc:v1:{NAME[7:20]} enc:{NAME}e",
    f"long {LONG} end",
    f"eeeeeeee{NAME}eeeeee",
    "enc:v1:0123456789abcdef:" + "A" * 500,  # ciphertext-shaped, not issued: never held
]


def streamed(chunks: list[str]) -> str:
    stage = CiphertextRestorer(ISSUED, OPEN)
    return stream_through(stage, chunks, hold_limit=stage.max_hold)


def test_opener_opens_this_tenants_ciphertexts_only() -> None:
    assert OPEN(NAME) == "Ada Lovelace"
    assert OPEN(NUMBER) == "4242"  # inside text, a number becomes its JSON text
    assert OPEN(SAME_TENANT_OTHER_CALL) == "from an earlier call"
    assert OPEN(OTHER_TENANT) is None
    assert OPEN(OTHER_KEY) is None
    assert OPEN(ALTERED) is None


def test_whole_text_result() -> None:
    text = f"a {NAME} b {NUMBER}. c {SAME_TENANT_OTHER_CALL} d {OTHER_TENANT} e {NAME}X"
    opened, count = open_ciphertexts(text, ISSUED, OPEN)
    assert opened == (
        f"a Ada Lovelace b 4242. c {SAME_TENANT_OTHER_CALL} d {OTHER_TENANT} e {NAME}X"
    )
    assert count == 2


def test_the_hold_bound_is_the_longest_issued_ciphertext() -> None:
    stage = CiphertextRestorer(ISSUED, OPEN)
    assert stage.max_hold == len(LONG) == max(len(c) for c in ISSUED)
    assert CiphertextRestorer((), OPEN).max_hold == 0


@pytest.mark.parametrize("text", TEXTS)
def test_every_single_split_matches_the_whole_text(text: str) -> None:
    expected, _ = open_ciphertexts(text, ISSUED, OPEN)
    for chunks in every_single_split(text):
        assert streamed(chunks) == expected, chunks


@pytest.mark.parametrize("issued", [NAME, NUMBER])
def test_every_split_into_three_chunks_is_opened(issued: str) -> None:
    text = f"say {issued}."
    expected, _ = open_ciphertexts(text, ISSUED, OPEN)
    assert issued not in expected
    start = text.index(issued)
    for first in range(start, start + len(issued) + 1):
        for second in range(first, start + len(issued) + 1):
            chunks = [text[:first], text[first:second], text[second:]]
            assert streamed(chunks) == expected, chunks


@pytest.mark.parametrize("text", TEXTS)
def test_random_multi_splits_match_the_whole_text(text: str) -> None:
    expected, _ = open_ciphertexts(text, ISSUED, OPEN)
    for chunks in random_splits(text, runs=100, seed=len(text), max_chunk=12):
        assert streamed(chunks) == expected, chunks


def test_character_by_character_counts_what_it_opened() -> None:
    text = " ".join(TEXTS)
    expected, count = open_ciphertexts(text, ISSUED, OPEN)
    stage = CiphertextRestorer(ISSUED, OPEN)
    assert stream_through(stage, list(text), hold_limit=stage.max_hold) == expected
    assert stage.restored == count > 0


def test_only_issued_ciphertexts_are_opened_even_if_the_key_would_open_others() -> None:
    text = f"{SAME_TENANT_OTHER_CALL} {OTHER_TENANT} {OTHER_KEY} {ALTERED}"
    calls: list[str] = []

    def opener(ciphertext: str) -> str | None:
        calls.append(ciphertext)
        return OPEN(ciphertext)

    stage = CiphertextRestorer(ISSUED, opener)
    assert stream_through(stage, list(text), hold_limit=stage.max_hold) == text
    assert calls == [] and stage.restored == 0


def test_each_ciphertext_is_decrypted_once_per_stream() -> None:
    calls: list[str] = []

    def opener(ciphertext: str) -> str | None:
        calls.append(ciphertext)
        return OPEN(ciphertext)

    stage = CiphertextRestorer(ISSUED, opener)
    out = stream_through(stage, [f"{NAME} ", f"{NAME} ", NAME], hold_limit=stage.max_hold)
    assert out == "Ada Lovelace Ada Lovelace Ada Lovelace"
    assert calls == [NAME] and stage.restored == 3


def test_prose_is_released_at_once_and_nothing_is_held_without_issued_ciphertexts() -> None:
    stage = CiphertextRestorer(ISSUED, OPEN)
    assert stage.feed("Hello, world. ") == "Hello, world. "
    assert stage.feed("One more word") == "One more word"
    assert stage.feed(" and then") == " and th"  # "en" could start the marker
    assert stage.held == 2
    assert stage.feed(" some") == "en som"
    assert stage.finish() == "e"
    idle = CiphertextRestorer((), OPEN)
    assert idle.feed("enc:v1:") == "enc:v1:" and idle.held == 0


def test_a_model_cannot_make_it_buffer_more_than_the_bound() -> None:
    stage = CiphertextRestorer(ISSUED, OPEN)
    fake = NAME[:30] + "Z" * 10_000  # starts like an issued ciphertext, then diverges
    out = []
    for chunk in [fake[i : i + 7] for i in range(0, len(fake), 7)]:
        out.append(stage.feed(chunk))
        assert stage.held <= stage.max_hold
    assert "".join(out) + stage.finish() == fake


def test_behind_the_token_restorer_in_one_pipeline() -> None:
    token = "TKN-0123456789ABCDEFGHJK"
    pipeline = TextPipeline(
        [
            StreamingRestorer(lambda tokens: {t: "ada@example.com" for t in tokens if t == token}),
            CiphertextRestorer(ISSUED, OPEN),
        ]
    )
    text = f"mail {token}, name {NAME}, number {NUMBER}"
    out = "".join(pipeline.feed(ch) for ch in text) + pipeline.finish()
    assert out == "mail ada@example.com, name Ada Lovelace, number 4242"


def test_feed_after_finish_is_an_error() -> None:
    stage = CiphertextRestorer(ISSUED, OPEN)
    stage.finish()
    with pytest.raises(RuntimeError):
        stage.feed("x")

"""StreamingRestorer: tokens split across chunks are restored exactly as in the whole text."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import pytest

from broker.enforce.vault import TOKEN_RE, new_token
from broker.streaming import MAX_TOKEN_HOLD, StreamingRestorer, restore_text

from .splits import every_single_split, random_splits, stream_through

MINE = "TKN-0123456789ABCDEFGHJK"
ENDS_LIKE_A_PREFIX = "TKN-0123456789ABCDEFGTKT"  # its last characters look like a new token
OTHER_TENANT = "TKN-ZZZZZZZZZZZZZZZZZZZZ"  # well-formed, but not issued to this call
VALUES = {MINE: "Ada Lovelace", ENDS_LIKE_A_PREFIX: "ada@example.org"}

TEXTS = [
    "",
    "no tokens at all",
    MINE,
    f"Hello {MINE}, your card ends in 4242.",
    f"{MINE}{MINE}",
    f"{ENDS_LIKE_A_PREFIX}KN-0123456789ABCDEFGHJK",
    f"forged {OTHER_TENANT} stays, mine {MINE} goes",
    "TKN-TKN-TKN-0123456789ABCDEFGHJK T TK TKN TKN- TKN-012",
    "lowercase tkn-0123456789abcdefghjk is not a token",
    f"too long: {MINE}XYZ and too short TKN-0123456789ABCDEFGHJ!",
    f"TTTTTKN-{MINE[4:]}TTT",
    f"invalid letters TKN-0123456789ABCDEFGHIL then {ENDS_LIKE_A_PREFIX}",
]


class FakeVault:
    """Resolves only this call's tokens and records every lookup."""

    def __init__(self) -> None:
        self.lookups: list[set[str]] = []

    def __call__(self, tokens: Collection[str]) -> Mapping[str, str]:
        self.lookups.append(set(tokens))
        return {token: VALUES[token] for token in tokens if token in VALUES}


def streamed(chunks: list[str]) -> str:
    return stream_through(StreamingRestorer(FakeVault()), chunks, hold_limit=MAX_TOKEN_HOLD)


def test_hold_bound_is_a_token_minus_one_character() -> None:
    assert MAX_TOKEN_HOLD == len("TKN-") + 20 - 1 == 23


@pytest.mark.parametrize("text", TEXTS)
def test_every_single_split_matches_the_whole_text(text: str) -> None:
    expected, _ = restore_text(text, FakeVault())
    for chunks in every_single_split(text):
        assert streamed(chunks) == expected, chunks


@pytest.mark.parametrize("text", TEXTS)
def test_random_multi_splits_match_the_whole_text(text: str) -> None:
    expected, _ = restore_text(text, FakeVault())
    for chunks in random_splits(text, runs=200, seed=len(text), max_chunk=6):
        assert streamed(chunks) == expected, chunks


def test_character_by_character() -> None:
    text = " ".join(TEXTS)
    expected, count = restore_text(text, FakeVault())
    restorer = StreamingRestorer(FakeVault())
    assert stream_through(restorer, list(text), hold_limit=MAX_TOKEN_HOLD) == expected
    assert restorer.restored == count > 0


def test_random_tokens_in_generated_text_survive_any_split() -> None:
    tokens = [new_token() for _ in range(20)]
    values = {token: f"value-{i}" for i, token in enumerate(tokens)}
    text = " and ".join(f"{t}{'T' * (i % 3)}" for i, t in enumerate(tokens))

    def resolve(found: Collection[str]) -> Mapping[str, str]:
        return {t: values[t] for t in found if t in values}

    expected, count = restore_text(text, resolve)
    assert count == 20 and not TOKEN_RE.search(expected)
    for chunks in random_splits(text, runs=100, seed=7, max_chunk=30):
        restorer = StreamingRestorer(resolve)
        assert stream_through(restorer, chunks, hold_limit=MAX_TOKEN_HOLD) == expected


def test_forged_and_foreign_tokens_are_left_as_text() -> None:
    restorer = StreamingRestorer(FakeVault())
    out = restorer.feed(f"a {OTHER_TENANT} b ") + restorer.finish()
    assert out == f"a {OTHER_TENANT} b "
    assert restorer.restored == 0


def test_text_without_a_possible_token_start_is_released_at_once() -> None:
    restorer = StreamingRestorer(FakeVault())
    assert restorer.feed("Hello world, ") == "Hello world, "
    assert restorer.feed("the Total is") == "the Total is"
    assert restorer.feed(" T") == " "
    assert restorer.held == 1


def test_only_a_possible_token_prefix_is_held() -> None:
    restorer = StreamingRestorer(FakeVault())
    assert restorer.feed("name: TKN-0123") == "name: "
    assert restorer.held == len("TKN-0123")
    assert restorer.feed("456789ABCDEFGHJK!") == "Ada Lovelace!"
    assert restorer.held == 0


def test_each_token_is_looked_up_once_per_stream() -> None:
    vault = FakeVault()
    restorer = StreamingRestorer(vault)
    for _ in range(3):
        restorer.feed(f"{MINE} {OTHER_TENANT} ")
    restorer.finish()
    assert vault.lookups == [{MINE, OTHER_TENANT}]
    assert restorer.restored == 3


def test_no_lookup_when_no_token() -> None:
    vault = FakeVault()
    restorer = StreamingRestorer(vault)
    restorer.feed("TKN- is the prefix we use")
    restorer.finish()
    assert vault.lookups == []


def test_feed_after_finish_is_a_bug() -> None:
    restorer = StreamingRestorer(FakeVault())
    restorer.finish()
    with pytest.raises(RuntimeError):
        restorer.feed("x")

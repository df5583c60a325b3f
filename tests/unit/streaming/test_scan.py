"""StreamingScanner: entity actions on streamed text equal those on the whole text."""

from __future__ import annotations

import random

import pytest

from broker.classify.detectors import Span, default_detector_set
from broker.streaming import LOOKAHEAD_CHARS, StreamingScanner, scan_text
from tests.unit.classify.corpus import build_corpus

from .splits import every_single_split, random_splits, stream_through

DETECTORS = default_detector_set()


def marker(span: Span, text: str) -> str:
    """An action that shows label and offsets, so that offsets must match too."""
    assert text
    return f"[{span.label}@{span.start}-{span.end}]"


def scanner(max_entity_chars: int = 256) -> StreamingScanner:
    return StreamingScanner(DETECTORS, marker, max_entity_chars=max_entity_chars)


def corpus_answer(seed: int, *, sentences: int, max_entity: int) -> str:
    """Sentences from the detector corpus (entities of every label, hard negatives) as one text."""
    rng = random.Random(seed)
    items = [
        item
        for item in build_corpus(seed=seed, per_label=6, negatives=20)
        if all(len(span) <= max_entity for span in item.spans)
    ]
    return " ".join(item.text for item in rng.sample(items, sentences))


PROSE = (
    "Sure! I have updated the record for Ada Lovelace. Her e-mail is ada.lovelace@example.org "
    "and her phone is +44 20 7946 0958; the card on file is 4111 1111 1111 1111 and the IBAN "
    "GB82 WEST 1234 5698 7654 32. The server at 192.168.10.20 (and fe80::1ff:fe23:4567:890a) "
    "logged key AKIAIOSFODNN7EXAMPLE. SSN 123-45-6789 was not needed. Anything else?"
)


def test_hold_bound() -> None:
    assert scanner().max_hold == 2 * 256 + LOOKAHEAD_CHARS == 520


def test_prose_finds_every_kind_of_entity() -> None:
    out = scan_text(PROSE, DETECTORS, marker)
    for label in ("pii.email", "pii.phone", "pci.card", "finance.iban", "net.ip"):
        assert f"[{label}@" in out


def test_every_single_split_of_prose() -> None:
    expected = scan_text(PROSE, DETECTORS, marker)
    for chunks in every_single_split(PROSE):
        assert stream_through(scanner(), chunks, hold_limit=520) == expected, chunks


def test_random_splits_of_prose_with_a_small_window() -> None:
    """A 40-character window forces the hold-window path often; entities here are shorter."""
    expected = scan_text(PROSE, DETECTORS, marker)
    for chunks in random_splits(PROSE, runs=60, seed=1, max_chunk=12):
        got = stream_through(scanner(40), chunks, hold_limit=2 * 40 + LOOKAHEAD_CHARS)
        assert got == expected, chunks


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_single_split_of_corpus_answers(seed: int) -> None:
    text = corpus_answer(seed, sentences=12, max_entity=256)
    expected = scan_text(text, DETECTORS, marker)
    assert "[" in expected
    for chunks in every_single_split(text):
        assert stream_through(scanner(), chunks, hold_limit=520) == expected, chunks


@pytest.mark.parametrize("seed", [4, 5, 6, 7])
def test_random_multi_splits_of_corpus_answers(seed: int) -> None:
    text = corpus_answer(seed, sentences=40, max_entity=256)
    expected = scan_text(text, DETECTORS, marker)
    for chunks in random_splits(text, runs=15, seed=seed, max_chunk=16):
        assert stream_through(scanner(), chunks, hold_limit=520) == expected


@pytest.mark.parametrize("seed", [8, 9])
def test_small_window_on_corpus_answers_with_short_entities(seed: int) -> None:
    text = corpus_answer(seed, sentences=30, max_entity=48)
    expected = scan_text(text, DETECTORS, marker)
    for chunks in random_splits(text, runs=10, seed=seed, max_chunk=8):
        assert stream_through(scanner(48), chunks, hold_limit=2 * 48 + LOOKAHEAD_CHARS) == (
            expected
        )


def test_spans_are_reported_with_whole_text_offsets() -> None:
    s = scanner()
    for ch in PROSE:
        s.feed(ch)
    s.finish()
    assert s.spans == DETECTORS.scan(PROSE)


def test_prose_is_released_word_by_word() -> None:
    """Time to first chunk: plain words go out as soon as the whitespace after them arrives."""
    s = scanner()
    assert s.feed("Sure, here ") == "Sure, here "
    assert s.feed("is the") == "is "
    assert s.feed(" answer you") == "the answer "
    assert s.held == len("you")


def test_a_leading_number_goes_out_when_the_next_word_shows_a_lowercase_letter() -> None:
    """A list answer ("1. Red") must not wait a whole word more than prose does."""
    s = scanner()
    assert s.feed("1") == ""
    assert s.feed(".") == ""
    assert s.feed(" R") == ""  # "R" could still be part of an IBAN group or an ID
    assert s.feed("ed") == "1. "
    assert s.feed(": This") == "Red: "


def test_digits_before_a_capitalised_word_wait_for_its_lowercase_letter() -> None:
    """ "GB82 WEST ... 32 RE" could still grow into a longer IBAN until a lowercase letter."""
    iban = "GB82 WEST 1234 5698 7654 32"
    s = scanner()
    assert s.feed(f"the IBAN {iban} ") == "the "
    assert s.feed("RE") == ""
    start = len("the IBAN ")
    assert s.feed("ady") == f"IBAN [{DETECTORS.scan(iban)[0].label}@{start}-{start + len(iban)}] "


def test_a_phone_number_split_by_spaces_is_not_cut_at_its_spaces() -> None:
    s = scanner()
    assert s.feed("call +44 20 ") == "call "
    assert s.feed("7946 0958 to") == "[pii.phone@5-21] "


def test_an_entity_waits_until_it_is_complete() -> None:
    s = scanner()
    assert s.feed("mail ada@example.o") == "mail "
    assert s.feed("rg now ") == "[pii.email@5-20] now "


def test_an_unclosed_private_key_block_is_held() -> None:
    s = scanner()
    out = s.feed(
        "here it is -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC and more "
    )
    assert "MIIE" not in out
    assert s.held > 0


def test_an_entity_longer_than_the_window_is_outside_the_guarantee() -> None:
    """Documented limit: a 433-character e-mail under a 256 window may leave partly unchanged.

    The scanner still never holds more than ``max_hold``, and whatever the detectors recognise
    in the window is acted on.
    """
    email = "a" * 20 + "@" + ".".join(["sub"] * 100) + ".example.com"
    text = f"write to {email} today "
    s = StreamingScanner(DETECTORS, lambda span, _: "[X]", max_entity_chars=256)
    out = stream_through(s, list(text), hold_limit=s.max_hold)
    assert out.startswith("write to ") and out.endswith("[X] today ")
    wide = StreamingScanner(DETECTORS, lambda span, _: "[X]", max_entity_chars=512)
    assert stream_through(wide, list(text), hold_limit=wide.max_hold) == "write to [X] today "


def test_window_must_fit_the_detectors_scan_cap() -> None:
    with pytest.raises(ValueError, match="scan cap"):
        StreamingScanner(default_detector_set(100), marker)
    with pytest.raises(ValueError, match="max_entity_chars"):
        StreamingScanner(DETECTORS, marker, max_entity_chars=0)


def test_feed_after_finish_is_a_bug() -> None:
    s = scanner()
    s.finish()
    with pytest.raises(RuntimeError):
        s.feed("x")

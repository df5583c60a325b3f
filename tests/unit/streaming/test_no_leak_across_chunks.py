"""No entity or token split across chunks leaks: streamed output equals the whole-text result.

The scanner releases text early (word and hard breaks, ``scan.py``), so these tests attack the
release points: randomly generated answers pack e-mail addresses, card numbers, phone numbers,
IBANs, IP addresses, national IDs, short private key blocks, the buyer's vault tokens and
foreign tokens against words, list numbers and the punctuation the scanner treats as a break
(``, ; ! ? " ' *``, tabs, line breaks), and are cut at random (down to one character per chunk,
and word-wise as a model's tokens are). Output cannot be taken back once released, so equality
of the concatenated output with the non-streamed enforcement (``scan_text`` then
``restore_text``) means no prefix released at any moment held anything it should not have.
The negative checks make sure the comparison is not vacuous: the raw entities are in the
answers and not in the output.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Iterator, Mapping

import pytest

from broker.classify.detectors import Span, default_detector_set
from broker.enforce import transforms
from broker.streaming import (
    DEFAULT_MAX_ENTITY_CHARS,
    StreamingRestorer,
    StreamingScanner,
    TextPipeline,
    restore_text,
    run_stream,
    scan_text,
)
from tests.unit.classify import corpus

from .splits import random_splits

DETECTORS = default_detector_set()
MINE = {"TKN-0123456789ABCDEFGHJK": "Ada Lovelace", "TKN-ZYXWVTSRQPNMKJHGFEDC": "4 Main St"}
FOREIGN = "TKN-ABCDEFGHJKMNPQRSTVWX"  # well-formed, not this call's: stays text

_Maker = Callable[[random.Random], str]


def _short_key(rng: random.Random) -> str:
    kind = rng.choice(["RSA ", "EC ", ""])
    lines = [
        "".join(rng.choice("ABCDEFGHabcdefgh0123456789+/") for _ in range(rng.randint(16, 40)))
        for _ in range(rng.randint(1, 2))
    ]
    body = "\n".join(lines)
    return f"-----BEGIN {kind}PRIVATE KEY-----\n{body}\n-----END {kind}PRIVATE KEY-----"


ENTITIES: tuple[_Maker, ...] = (
    corpus.make_email,
    corpus.make_card,
    corpus.make_phone,
    corpus.make_iban,
    corpus.make_ip,
    corpus.make_ssn,
    corpus.make_cn_id,
    corpus.make_cloud_key,
    _short_key,
)
TOKENS = (*MINE, FOREIGN)
GLUE = ("Sure", "here", "is", "it's", "Red", "1.", "2)", "RE", "GB", "at", "e", "T", "TK")
SEPARATORS = (
    " ", ", ", ",", "!", "! ", "?", "?\n", ";", "; ", '"', "'", "*", "**", "\t", "\n", "\n\n",
    ".", ". ", " (", ") ", ": ",
)  # fmt: skip


def resolve(tokens: Collection[str]) -> Mapping[str, str]:
    return {token: MINE[token] for token in tokens if token in MINE}


def redact(span: Span, _text: str) -> str:
    return transforms.redact_marker((span.label,))


def answers(seed: int, count: int) -> Iterator[tuple[str, list[str]]]:
    """Answers with their entities, each within the scanner's guarantee (see ``scan.py``)."""
    rng = random.Random(seed)
    made = 0
    while made < count:
        parts: list[str] = []
        entities: list[str] = []
        for _ in range(rng.randint(3, 12)):
            pick = rng.random()
            if pick < 0.4:
                entities.append(rng.choice(ENTITIES)(rng))
                parts.append(entities[-1])
            elif pick < 0.55:
                parts.append(rng.choice(TOKENS))
            else:
                parts.append(rng.choice(GLUE))
            parts.append(rng.choice(SEPARATORS))
        text = "".join(parts)
        if any(len(span) > DEFAULT_MAX_ENTITY_CHARS for span in DETECTORS.scan(text)):
            continue  # beyond the bound, documented as outside the guarantee
        made += 1
        yield text, entities


def word_splits(text: str) -> list[str]:
    """Cut before every space and line break, as a model's tokens (" word") arrive."""
    pieces: list[str] = []
    start = 0
    for i, ch in enumerate(text):
        if i > start and ch in " \n":
            pieces.append(text[start:i])
            start = i
    pieces.append(text[start:])
    return pieces


def pipeline() -> TextPipeline:
    return TextPipeline([StreamingScanner(DETECTORS, redact), StreamingRestorer(resolve)])


def expected(text: str) -> str:
    return restore_text(scan_text(text, DETECTORS, redact), resolve)[0]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_random_answers_at_random_splits_equal_the_whole_text(seed: int) -> None:
    for text, _ in answers(seed, 60):
        whole = expected(text)
        splits = [
            [text],
            list(text),
            word_splits(text),
            *random_splits(text, runs=6, seed=seed, max_chunk=5),
            *random_splits(text, runs=4, seed=seed + 100, max_chunk=17),
        ]
        for chunks in splits:
            assert "".join(run_stream(pipeline(), chunks)) == whole, (text, chunks)


@pytest.mark.parametrize("seed", [5, 6])
def test_every_single_split_of_random_answers(seed: int) -> None:
    for text, _ in answers(seed, 8):
        whole = expected(text)
        for i in range(len(text) + 1):
            chunks = [text[:i], text[i:]]
            assert "".join(run_stream(pipeline(), chunks)) == whole, (text, i)


def test_the_answers_are_not_vacuous() -> None:
    """Raw entities are in the answers and never in the output; my tokens come back restored."""
    raw_seen = restored_seen = generated = 0
    for text, entities in answers(7, 80):
        generated += len(entities)
        out = "".join(run_stream(pipeline(), list(text)))
        for span in DETECTORS.scan(text):
            raw = text[span.start : span.end]
            raw_seen += 1
            assert raw not in out, (text, raw)
        for token, value in MINE.items():
            if token in text:
                restored_seen += 1
                assert token not in out and value in out
        assert FOREIGN not in text or FOREIGN in out
    assert generated > 200 and raw_seen > 200 and restored_seen > 20


def test_hard_breaks_release_at_once_but_never_inside_an_entity() -> None:
    """Hard breaks in the text around an entity; never a cut through the entity itself."""
    card = "4111 1111 1111 1111"
    scanner = StreamingScanner(DETECTORS, redact)
    assert scanner.feed("Sure") == ""  # could still become Sure@example.com
    assert scanner.feed("!") == "Sure!"
    assert scanner.feed(f' "{card[:9]}') == ' "'
    assert scanner.feed(card[9:]) == ""  # complete, but a fifth group could follow
    assert scanner.feed('",') == '[REDACTED:pci.card]",'
    assert scanner.feed(" mail x@example.com") == " mail "
    assert scanner.feed(";") == "[REDACTED:pii.email];"


def test_an_email_glued_to_punctuation_waits_for_its_end() -> None:
    """``,`` ends an address, ``.`` and ``-`` may not: each case equals the whole text."""
    for tail in (",", ".", "-", ".org,", "!", "'", "*"):
        text = f"write to ada@example.co{tail} now"
        whole = scan_text(text, DETECTORS, redact)
        for i in range(len(text) + 1):
            scanner = StreamingScanner(DETECTORS, redact)
            out = scanner.feed(text[:i]) + scanner.feed(text[i:]) + scanner.finish()
            assert out == whole, (text, i)


def test_a_key_block_whose_end_line_is_still_arriving_stays_one_entity() -> None:
    """Line breaks are hard breaks, but not inside a private key block before its END line.

    An END line that has only partly arrived (``-----END RSA PRI``) does not close the block:
    the block and its END line go out as the one redaction the whole text gives.
    """
    block = _short_key(random.Random(3))
    text = f"Here it is:\n{block}\nDone."
    head, _, _ = block.rpartition("-----END")
    scanner = StreamingScanner(DETECTORS, redact)
    assert scanner.feed("Here it is:\n") == "Here it is:\n"
    assert scanner.feed(head + "-----END ") == ""
    assert scanner.feed(text[len("Here it is:\n") + len(head) + len("-----END ") :]) == (
        "[REDACTED:secret.private_key]\n"
    )
    assert scanner.finish() == "Done."
    whole = scan_text(text, DETECTORS, redact)
    for i in range(len(text) + 1):
        s = StreamingScanner(DETECTORS, redact)
        assert s.feed(text[:i]) + s.feed(text[i:]) + s.finish() == whole, i

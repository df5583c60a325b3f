"""The C-speed paths of the check-digit functions agree with the frozen reference's loops."""

from __future__ import annotations

import random
import string

from broker.classify.detectors.checksums import iban_ok, luhn_ok
from broker.classify.detectors.financial import card_network_ok

from .generators import valid_card, valid_iban
from .reference import checksums as slow_checksums
from .reference import financial as slow_financial

_ODD_DIGITS = "٠١٢٣٤٥٦٧٨٩०१२३४५६७८९"  # Arabic-Indic and Devanagari: ``\\d`` matches them


def _digit_strings(rng: random.Random, count: int) -> list[str]:
    out = [valid_card(rng) for _ in range(count // 4)]
    for _ in range(count):
        alphabet = string.digits if rng.random() < 0.9 else string.digits + _ODD_DIGITS
        out.append("".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 24))))
    return out


def test_luhn_matches_the_loop() -> None:
    rng = random.Random(1)
    texts = _digit_strings(rng, 20_000)
    assert [luhn_ok(t) for t in texts] == [slow_checksums.luhn_ok(t) for t in texts]
    assert any(luhn_ok(t) for t in texts)


def test_card_network_matches_the_table_scan() -> None:
    rng = random.Random(2)
    texts = _digit_strings(rng, 20_000)
    texts += [p + "".join(rng.choice(string.digits) for _ in range(12)) for p in ("2221", "6759")]
    fast = [card_network_ok(t) for t in texts]
    assert fast == [slow_financial.card_network_ok(t) for t in texts]
    assert any(fast)


def test_iban_matches_the_remainder_loop() -> None:
    rng = random.Random(3)
    texts = [valid_iban(rng) for _ in range(3000)]
    alphabet = string.ascii_uppercase + string.digits + "ab-é٣"
    for valid in texts[:3000]:
        chars = list(valid)
        chars[rng.randrange(len(chars))] = rng.choice(alphabet)
        texts.append("".join(chars))
        texts.append(valid.lower() if rng.random() < 0.5 else valid[:2] + valid[2:].lower())
    fast = [iban_ok(t) for t in texts]
    assert fast == [slow_checksums.iban_ok(t) for t in texts]
    assert sum(fast) >= 3000


def test_iban_group_end_arithmetic_matches_the_loop() -> None:
    from broker.classify.detectors.financial import _char_end, _char_end_loop  # noqa: PLC0415

    rng = random.Random(4)
    alphabet = string.ascii_uppercase + string.digits
    for _ in range(20_000):
        body = "".join(rng.choice(alphabet) for _ in range(rng.randrange(14, 36)))
        grouped = " ".join(body[i : i + 4] for i in range(0, len(body), 4))
        for candidate in (body, grouped, grouped + " X"):
            length = rng.randrange(12, 36)
            assert _char_end(candidate, length) == _char_end_loop(candidate, length), candidate

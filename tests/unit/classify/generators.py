"""Valid identifiers with correct check digits, shared by the positives and the negatives."""

from __future__ import annotations

import random
import string

from broker.classify.detectors.checksums import CN_PROVINCES, iban_check_digits, luhn_check_digit


def digits(rng: random.Random, n: int) -> str:
    """``n`` random ASCII digits."""
    return "".join(rng.choice(string.digits) for _ in range(n))


def chars(rng: random.Random, alphabet: str, n: int) -> str:
    """``n`` random characters of ``alphabet``."""
    return "".join(rng.choice(alphabet) for _ in range(n))


_CARD_PREFIXES = (
    ("4", 16), ("4", 13), ("4", 19), ("51", 16), ("55", 16), ("2221", 16), ("2720", 16),
    ("34", 15), ("37", 15), ("6011", 16), ("65", 16), ("62", 16), ("62", 19), ("3530", 16),
    ("36", 14), ("2200", 16),
)  # fmt: skip


def valid_card(rng: random.Random) -> str:
    """A Luhn-valid number with a real network prefix and length (digits only)."""
    prefix, length = rng.choice(_CARD_PREFIXES)
    body = prefix + digits(rng, length - len(prefix) - 1)
    return body + luhn_check_digit(body)


def format_card(rng: random.Random, digits: str) -> str:
    """Bare, or grouped the way the network prints it, with spaces or dashes."""
    sep = rng.choice(["", " ", "-"])
    if not sep:
        return digits
    if len(digits) in (14, 15):
        return sep.join([digits[:4], digits[4:10], digits[10:]])
    return sep.join(digits[i : i + 4] for i in range(0, len(digits), 4))


# BBAN shapes: (country, [(alphabet, count), ...]).
_BBANS = (
    ("DE", [(string.digits, 18)]), ("GB", [(string.ascii_uppercase, 4), (string.digits, 14)]),
    ("FR", [(string.digits, 10), (string.ascii_uppercase + string.digits, 11), (string.digits, 2)]),
    ("ES", [(string.digits, 20)]), ("NL", [(string.ascii_uppercase, 4), (string.digits, 10)]),
    ("IT", [(string.ascii_uppercase, 1), (string.digits, 10), (string.digits, 12)]),
    ("BE", [(string.digits, 12)]), ("CH", [(string.digits, 5), (string.digits, 12)]),
    ("PL", [(string.digits, 24)]), ("NO", [(string.digits, 11)]),
)  # fmt: skip


def valid_iban(rng: random.Random) -> str:
    """A compact IBAN with correct check digits."""
    country, parts = rng.choice(_BBANS)
    bban = "".join(chars(rng, alphabet, n) for alphabet, n in parts)
    return country + iban_check_digits(country, bban) + bban


def format_iban(rng: random.Random, compact: str) -> str:
    if rng.random() < 0.5:
        return compact
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def cn_id_body(rng: random.Random) -> str:
    """The first 17 digits: province, area, a real birth date, sequence."""
    province = rng.choice(sorted(CN_PROVINCES))
    year, month = rng.randint(1935, 2015), rng.randint(1, 12)
    day = rng.randint(1, 28)
    return f"{province}{digits(rng, 4)}{year}{month:02d}{day:02d}{digits(rng, 3)}"

"""Payment card numbers (PAN) and IBANs, each accepted only when its check digits hold.

A card is 13 to 19 digits, bare or in groups separated by one kind of separator (space or dash:
``4111 1111 1111 1111``, ``3782-822463-10005``), starting with a major network's IIN prefix at a
length that network issues, and passing Luhn. One random digit string in ten passes Luhn, so the
IIN table and the boundary rules (not inside a longer digit run) do most of the work.

An IBAN is a country code, two check digits and the BBAN, bare or printed in groups of four; its
length must match the country (ISO 13616 registry) and MOD 97-10 must give 1. A printed IBAN
followed by another short group (``... 0130 00 BIC ...``) is cut to the country's length at a
group boundary, rather than rejected.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final

from .base import Span, TextFeatures
from .checksums import IBAN_LENGTHS, iban_ok, luhn_ok

CARD: Final = "pci.card"
IBAN: Final = "finance.iban"

_CARD_RE: Final = re.compile(
    r"(?<![0-9A-Za-z])(?<![0-9][ \-])(?:"
    r"\d{13,19}"
    r"|\d{4}(?P<s>[ \-])\d{4}(?P=s)\d{4}(?P=s)\d{1,4}(?:(?P=s)\d{1,3})?"  # 4-4-4-4(-3)
    r"|\d{4}(?P<a>[ \-])\d{6}(?P=a)\d{4,5}"  # Amex 4-6-5, Diners 4-6-4
    r")(?![0-9A-Za-z])(?![ \-][0-9])"
)

# (prefix range, prefix width, lengths) per network. Networks whose rules allow 17 or 18 digits
# but never issue them (Discover, JCB, Diners, Mir) are held to 16 and 19: an 18-digit run is far
# more often a resident ID or an order number than a card.
_IIN: Final[tuple[tuple[range, int, frozenset[int]], ...]] = (
    (range(4, 5), 1, frozenset({13, 16, 19})),  # Visa
    (range(51, 56), 2, frozenset({16})),  # Mastercard
    (range(2221, 2721), 4, frozenset({16})),  # Mastercard 2-series
    (range(34, 35), 2, frozenset({15})),  # American Express
    (range(37, 38), 2, frozenset({15})),  # American Express
    (range(6011, 6012), 4, frozenset({16, 19})),  # Discover
    (range(644, 650), 3, frozenset({16, 19})),  # Discover
    (range(65, 66), 2, frozenset({16, 19})),  # Discover
    (range(3528, 3590), 4, frozenset({16, 19})),  # JCB
    (range(62, 63), 2, frozenset({16, 17, 18, 19})),  # UnionPay
    (range(300, 306), 3, frozenset({14, 16, 19})),  # Diners Club International
    (range(36, 37), 2, frozenset({14, 16, 19})),  # Diners Club
    (range(38, 40), 2, frozenset({14, 16, 19})),  # Diners Club
    (range(2200, 2205), 4, frozenset({16, 19})),  # Mir
    (range(6759, 6760), 4, frozenset({13, 16, 18, 19})),  # Maestro UK
    (range(5018, 5019), 4, frozenset({16, 18, 19})),  # Maestro
    (range(5020, 5021), 4, frozenset({16, 18, 19})),  # Maestro
    (range(6304, 6305), 4, frozenset({16, 18, 19})),  # Maestro
)


def card_network_ok(digits: str) -> bool:
    """True if ``digits`` starts with a major network's IIN and has a length that network uses."""
    return any(
        int(digits[:width]) in prefixes and len(digits) in lengths
        for prefixes, width, lengths in _IIN
    )


class CardDetector:
    """Payment card numbers: IIN prefix and length of a major network, and Luhn."""

    labels: Final = frozenset({CARD})

    def wants(self, features: TextFeatures) -> bool:
        """The shortest card has 13 digits."""
        return features.digits >= 13

    def find(self, text: str) -> Iterator[Span]:
        """Every candidate whose digits pass the network table and Luhn."""
        for m in _CARD_RE.finditer(text):
            digits = m.group().replace(" ", "").replace("-", "")
            if card_network_ok(digits) and luhn_ok(digits):
                yield Span(CARD, m.start(), m.end())


_IBAN_RE: Final = re.compile(
    r"(?<![0-9A-Za-z])[A-Z]{2}\d{2}"
    r"(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?)"
    r"(?![0-9A-Za-z])"
)


class IbanDetector:
    """IBANs: registered country length and ISO 7064 MOD 97-10, bare or in groups of four."""

    labels: Final = frozenset({IBAN})

    def wants(self, features: TextFeatures) -> bool:
        """The shortest IBAN (Norway) has 15 characters, two of them check digits."""
        return features.digits >= 2 and features.length >= 15

    def find(self, text: str) -> Iterator[Span]:
        """Every IBAN, cut to its country's length at a group boundary when followed by more."""
        for m in _IBAN_RE.finditer(text):
            candidate = m.group()
            length = IBAN_LENGTHS.get(candidate[:2])
            if length is None:
                continue
            end = _char_end(candidate, length)
            if end is None:
                continue
            if iban_ok(candidate[:end].replace(" ", "")):
                yield Span(IBAN, m.start(), m.start() + end)


def _char_end(candidate: str, length: int) -> int | None:
    """Offset after the ``length``-th non-space character, if a printed group ends there."""
    seen = 0
    for i, ch in enumerate(candidate):
        if ch != " ":
            seen += 1
            if seen == length:
                end = i + 1
                return end if end == len(candidate) or candidate[end] == " " else None
    return None

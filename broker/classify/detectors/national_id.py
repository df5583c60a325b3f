"""National identity numbers: Chinese resident ID (GB 11643-1999) and US Social Security number.

A Chinese resident ID is 18 characters: a 6-digit region code (GB/T 2260), the birth date as
YYYYMMDD, a 3-digit sequence, and a check character from ISO 7064 MOD 11-2 (``0``-``9`` or ``X``,
accepted in either case). We check the province part of the region code, that the date exists
(1900-2099), and the check character: a random 18-digit run passes all three about once in 3,000.
The older 15-digit form (no check digit) is not detected: too many order numbers look like it.

A US SSN is ``AAA-GG-SSSS`` (dashes or single spaces, the same both times). The SSA never issues
area 000, 666 or 900-999, group 00 or serial 0000; those, and the numbers that were printed on
sample cards and in advertising (078-05-1120, 219-09-9999) or serve as the textbook example
(123-45-6789), are not reported. A bare nine-digit
run is not reported: without the separators it is indistinguishable from any other number.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final

from broker.classify.detectors.base import DualPattern, Span, TextFeatures
from broker.classify.detectors.checksums import cn_id_ok

CN_ID: Final = "pii.national_id.cn"
US_SSN: Final = "pii.national_id.us_ssn"

# Every pattern here and in the sibling modules starts with a character class and checks the
# character before it with a look-behind placed *after* that class (``[1-9](?<![0-9A-Za-z][1-9])``
# rather than ``(?<![0-9A-Za-z])[1-9]``): the two match the same text, but ``re`` can only skip
# ahead in C to the next possible first character when the pattern starts with a class. That
# turns one full match attempt per character into one per candidate character.
_CN_ID_RE: Final = DualPattern(
    r"[1-9](?<![0-9A-Za-z][1-9])"
    r"\d{5}(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[0-9Xx]"
    r"(?![0-9A-Za-z])"
)


class CnResidentIdDetector:
    """18-character PRC resident identity numbers with a valid province, date and check char."""

    labels: Final = frozenset({CN_ID})
    min_length: Final = 18  # 18 characters, always

    def wants(self, features: TextFeatures) -> bool:
        """At least 17 digits."""
        return features.digits >= 17

    def find(self, text: str) -> Iterator[Span]:
        """Every candidate passing ``cn_id_ok``."""
        for m in _CN_ID_RE.finditer(text):
            if cn_id_ok(m.group()):
                yield Span(CN_ID, m.start(), m.end())


# The area (``(?!000|666|9)\d{3}`` before the rewrite): a digit other than 9 first, then the
# excluded areas checked behind the three digits.
_SSN_RE: Final = DualPattern(
    r"[^\D9](?<![0-9A-Za-z][^\D9])(?<![0-9][ \-][^\D9])\d{2}(?<!000)(?<!666)"
    r"(?P<s>[\- ])(?!00)\d{2}(?P=s)(?!0000)\d{4}"
    r"(?![0-9A-Za-z])(?![ \-][0-9])"
)
_ADVERTISED_SSNS: Final = frozenset({"078051120", "219099999", "123456789"})


class UsSsnDetector:
    """US Social Security numbers printed as ``AAA-GG-SSSS``, never-issued ones excluded."""

    labels: Final = frozenset({US_SSN})
    min_length: Final = 11  # ``AAA-GG-SSSS``

    def wants(self, features: TextFeatures) -> bool:
        """Nine digits at least."""
        return features.digits >= 9

    def find(self, text: str) -> Iterator[Span]:
        """Every well-formed, possibly issued SSN."""
        for m in _SSN_RE.finditer(text):
            if re.sub(r"\D", "", m.group()) not in _ADVERTISED_SSNS:
                yield Span(US_SSN, m.start(), m.end())

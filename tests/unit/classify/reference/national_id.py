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

from .base import Span, TextFeatures
from .checksums import cn_id_ok

CN_ID: Final = "pii.national_id.cn"
US_SSN: Final = "pii.national_id.us_ssn"

_CN_ID_RE: Final = re.compile(
    r"(?<![0-9A-Za-z])[1-9]\d{5}(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[0-9Xx]"
    r"(?![0-9A-Za-z])"
)


class CnResidentIdDetector:
    """18-character PRC resident identity numbers with a valid province, date and check char."""

    labels: Final = frozenset({CN_ID})

    def wants(self, features: TextFeatures) -> bool:
        """At least 17 digits."""
        return features.digits >= 17

    def find(self, text: str) -> Iterator[Span]:
        """Every candidate passing ``cn_id_ok``."""
        for m in _CN_ID_RE.finditer(text):
            if cn_id_ok(m.group()):
                yield Span(CN_ID, m.start(), m.end())


_SSN_RE: Final = re.compile(
    r"(?<![0-9A-Za-z])(?<![0-9][ \-])"
    r"(?!000|666|9)\d{3}(?P<s>[\- ])(?!00)\d{2}(?P=s)(?!0000)\d{4}"
    r"(?![0-9A-Za-z])(?![ \-][0-9])"
)
_ADVERTISED_SSNS: Final = frozenset({"078051120", "219099999", "123456789"})


class UsSsnDetector:
    """US Social Security numbers printed as ``AAA-GG-SSSS``, never-issued ones excluded."""

    labels: Final = frozenset({US_SSN})

    def wants(self, features: TextFeatures) -> bool:
        """Nine digits at least."""
        return features.digits >= 9

    def find(self, text: str) -> Iterator[Span]:
        """Every well-formed, possibly issued SSN."""
        for m in _SSN_RE.finditer(text):
            if re.sub(r"\D", "", m.group()) not in _ADVERTISED_SSNS:
                yield Span(US_SSN, m.start(), m.end())

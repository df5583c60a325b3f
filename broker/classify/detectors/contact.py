"""E-mail addresses and phone numbers.

Phone numbers are the hardest entity to find without drowning in false positives, because many
things are "some digits with separators". The rules here trade a little recall for precision:

- international numbers need a ``+`` (or ``00``) and a real ITU country calling code, and the
  number of national digits must fit that country (a greedy match that swallowed a trailing
  number is cut back at a group boundary until it fits);
- national formats need their usual shape *with* separators (US/NANP ``(555) 123-4567`` or
  ``555-123-4567``; UK ``020 7946 0958``/``07700 900123``; DE ``030 12345678``/``(089) 1234567``;
  FR ``01 23 45 67 89``), except mobile numbers whose prefix is distinctive enough alone
  (UK ``07...`` 11 digits, FR ``06``/``07`` 10 digits, CN ``1[3-9]`` + 9 digits);
- a number that is part of a longer digit run, or glued to letters, is never a phone; nor is
  one inside text printed like an IBAN (``NL91 ABNA 0417 1643 00``), valid or not.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final

from broker.classify.detectors.base import DualPattern, Span, TextFeatures

EMAIL: Final = "pii.email"
PHONE: Final = "pii.phone"

_EMAIL_RE: Final = re.compile(
    r"(?<![A-Za-z0-9._%+\-])"
    r"[A-Za-z0-9](?:[A-Za-z0-9._%+\-]{0,62}[A-Za-z0-9_%+\-])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}"
    r"(?![A-Za-z0-9\-])(?!\.[A-Za-z0-9])"
)

_LOCAL_MAX: Final = 64  # the longest local part ``_EMAIL_RE`` accepts
# The run of local-part characters ending where the search ends (``endpos`` = the ``@``).
_LOCAL_RUN_RE: Final = re.compile(r"[A-Za-z0-9._%+\-]+\Z")


class EmailDetector:
    """RFC 5321-shaped addresses with an ASCII local part and a dotted domain with a letter TLD."""

    labels: Final = frozenset({EMAIL})
    min_length: Final = 6  # ``a@b.cd``

    def wants(self, features: TextFeatures) -> bool:
        """An address needs an ``@`` and a dot."""
        return features.has_at and features.has_dot

    def find(self, text: str) -> Iterator[Span]:
        """Every address, skipping local parts with ``..`` (invalid unquoted)."""
        for m in _email_matches(text):
            local = m.group().partition("@")[0]
            if ".." not in local:
                yield Span(EMAIL, m.start(), m.end())


def _email_matches(text: str) -> Iterator[re.Match[str]]:
    """What ``_EMAIL_RE.finditer(text)`` yields, trying the pattern only where it can match.

    ``finditer`` would try every position of the text. But the local part cannot hold ``@`` and
    must not follow a local-part character, so the only start that can work for a given ``@`` is
    the start of the run of local-part characters just before it, and only if that run is at
    most 64 long. Trying that one start per ``@`` (and none inside the previous match) yields the
    same matches as ``finditer``, without visiting the text between addresses.
    """
    resume = 0  # where the previous match ended: finditer never starts a match before it
    at = text.find("@")
    while at != -1:
        run = _LOCAL_RUN_RE.search(text, max(0, at - _LOCAL_MAX - 1), at)
        if run is not None and at - run.start() <= _LOCAL_MAX and run.start() >= resume:
            m = _EMAIL_RE.match(text, run.start())
            if m is not None:
                yield m
                resume = m.end()
        at = text.find("@", max(at + 1, resume))


# ITU-T E.164 country calling codes (assigned, 1 to 3 digits; the set is prefix-free).
_CODES: Final = (
    1, 7, 20, 27, 30, 31, 32, 33, 34, 36, 39, 40, 41, 43, 44, 45, 46, 47, 48, 49, 51, 52, 53,
    54, 55, 56, 57, 58, 60, 61, 62, 63, 64, 65, 66, 81, 82, 84, 86, 90, 91, 92, 93, 94, 95, 98,
    211, 212, 213, 216, 218, 220, 221, 222, 223, 224, 225, 226, 227, 228, 229, 230, 231, 232,
    233, 234, 235, 236, 237, 238, 239, 240, 241, 242, 243, 244, 245, 246, 248, 249, 250, 251,
    252, 253, 254, 255, 256, 257, 258, 260, 261, 262, 263, 264, 265, 266, 267, 268, 269, 290,
    291, 297, 298, 299, 350, 351, 352, 353, 354, 355, 356, 357, 358, 359, 370, 371, 372, 373,
    374, 375, 376, 377, 378, 380, 381, 382, 383, 385, 386, 387, 389, 420, 421, 423, 500, 501,
    502, 503, 504, 505, 506, 507, 508, 509, 590, 591, 592, 593, 594, 595, 596, 597, 598, 599,
    670, 672, 673, 674, 675, 676, 677, 678, 679, 680, 681, 682, 683, 685, 686, 687, 688, 689,
    690, 691, 692, 850, 852, 853, 855, 856, 880, 886, 960, 961, 962, 963, 964, 965, 966, 967,
    968, 970, 971, 972, 973, 974, 975, 976, 977, 992, 993, 994, 995, 996, 998,
)  # fmt: skip
_CALLING_CODES: Final[frozenset[str]] = frozenset(str(code) for code in _CODES)
# National significant number lengths (without the trunk 0) where they are fixed or narrow.
_NATIONAL_LENGTHS: Final[dict[str, tuple[int, int]]] = {
    "1": (10, 10), "7": (10, 10), "33": (9, 9), "34": (9, 9), "44": (9, 10), "49": (6, 13),
    "61": (9, 9), "81": (9, 10), "86": (10, 11), "91": (10, 10), "852": (8, 8), "886": (8, 9),
}  # fmt: skip
_DEFAULT_LENGTHS: Final = (6, 12)

_RIGHT: Final = r"(?![0-9A-Za-z])(?![ .\-/][0-9])"
# Every format starts with one of ``+ ( 0-9``. That first character is matched before the
# look-behinds, so ``re`` skips to candidates in C (see ``national_id._CN_ID_RE``), and each
# format below then starts after it, checking which character it was with ``(?<=...)``. The
# ``intl`` group therefore holds the number without its ``+`` or first ``0``.
_PHONE_RE: Final = DualPattern(
    r"[+(0-9](?<![0-9A-Za-z+][+(0-9])(?<![0-9][ .\-/][+(0-9])(?:"
    r"(?:(?<=\+)|(?<=0)0)(?P<intl>\d{1,3}(?:[ .\-]?(?:\(0\)|\(\d{1,4}\)|\d{1,5})){1,7})"
    r"(?![0-9A-Za-z])"
    r"|(?:"
    # CN mobile, optionally with 86 in front: 138 1234 5678, 138-1234-5678, 13812345678.
    r"(?:(?<=8)6[ \-]?1|(?<=1))[3-9]\d(?:\d{8}|(?P<cs>[ \-])\d{4}(?P=cs)\d{4})"
    # NANP: (555) 123-4567, 555-123-4567, 555.123.4567, 555 123 4567, 1-555-123-4567.
    r"|(?<=1)[ \-.](?:\([2-9]\d{2}\) ?\d{3}[\-. ]\d{4}|[2-9]\d{2}(?P<us>[\-. ])\d{3}(?P=us)\d{4})"
    r"|(?<=\()[2-9]\d{2}\) ?\d{3}[\-. ]\d{4}"
    r"|(?<=[2-9])\d{2}(?P<us2>[\-. ])\d{3}(?P=us2)\d{4}"
    # UK: 020 7946 0958, 0161 496 0000, 01632 960123, 07700 900123, 07700900123.
    r"|(?<=0)(?:\d{2} \d{4} \d{4}|\d{3} \d{3} \d{4}|\d{4} \d{6}|\d{4} \d{3} \d{3}|7\d{9})"
    # FR: 01 23 45 67 89, 06.12.34.56.78, 0612345678.
    r"|(?<=0)[1-9](?P<fr>[ .\-])\d{2}(?P=fr)\d{2}(?P=fr)\d{2}(?P=fr)\d{2}|(?<=0)[67]\d{8}"
    # DE (and other area-code formats): 030 12345678, 0151-12345678, 089/1234567, (030) 1234567.
    r"|(?:(?<=0)[1-9]\d{1,4}[ /\-]|(?<=\()0[1-9]\d{1,4}\) ?)\d{3,8}(?:[ \-]\d{2,5})?"
    rf"){_RIGHT})"
)
# A printed IBAN, valid or not: its groups of four digits must not be read as a phone number.
# ``\b[A-Z]`` written as ``[A-Z](?<!\w[A-Z])``, for the same reason as ``_PHONE_RE``.
_PRINTED_IBAN_RE: Final = DualPattern(
    r"[A-Z](?<!\w[A-Z])[A-Z]\d{2}(?: [A-Z0-9]{4}){2,}(?: [A-Z0-9]{1,4})?"
)
_GROUP_END_RE: Final = re.compile(r"\d(?=[^0-9]|$)")
# An international candidate holds digits, ``+``, spaces, ``.``, ``-`` and parentheses: deleting
# the others leaves exactly what ``re.sub(r"\D", "", ...)`` would, at a fraction of the cost.
_INTL_NON_DIGITS: Final = str.maketrans("", "", "+ .-()")
_NATIONAL_SEPARATORS: Final = str.maketrans("", "", " -./()")


class PhoneDetector:
    """International (``+CC``) numbers and US, UK, DE, FR and CN national formats."""

    labels: Final = frozenset({PHONE})
    min_length: Final = 9  # ``+20`` and six digits, or nine national digits

    def wants(self, features: TextFeatures) -> bool:
        """Every accepted format has at least 8 digits."""
        return features.digits >= 8

    def find(self, text: str) -> Iterator[Span]:
        """Every phone number whose digit count fits its format, outside IBAN-shaped text."""
        ibans: list[tuple[int, int]] | None = None
        for m in _PHONE_RE.finditer(text):
            if ibans is None:
                ibans = [g.span() for g in _PRINTED_IBAN_RE.finditer(text)]
            if any(start <= m.start() < end for start, end in ibans):
                continue
            if m.group("intl") is not None:
                end = _international_end(m.group())
                if end is not None:
                    yield Span(PHONE, m.start(), m.start() + end)
                continue
            # A national match is digits and the separators below, nothing else.
            digits = len(m.group().translate(_NATIONAL_SEPARATORS))
            if 9 <= digits <= 13:
                yield Span(PHONE, m.start(), m.end())


def _international_end(candidate: str) -> int | None:
    """Where a ``+CC ...`` candidate really ends, or None if no prefix of it is a valid number.

    Cuts only at the end of a digit group, so ``+44 20 7946 0958 12`` is cut before ``12``.
    """
    compact_all = candidate.replace("(0)", "").translate(_INTL_NON_DIGITS)
    if candidate.startswith("00"):
        compact_all = compact_all[2:]
    code = next((compact_all[:n] for n in (1, 2, 3) if compact_all[:n] in _CALLING_CODES), None)
    if code is None:
        return None
    low, high = _NATIONAL_LENGTHS.get(code, _DEFAULT_LENGTHS)
    ends = [m.end() for m in _GROUP_END_RE.finditer(candidate)]
    for end in reversed(ends):
        compact = candidate[:end].replace("(0)", "").translate(_INTL_NON_DIGITS)
        if candidate.startswith("00"):
            compact = compact[2:]
        national = len(compact) - len(code)
        if national < low:
            return None
        if national <= high and candidate.count("(", 0, end) == candidate.count(")", 0, end):
            return end
    return None

"""Check-digit algorithms that turn "looks like a number" into "is one of these numbers".

Pure functions over already-compacted strings (digits, or IBAN characters), so the detectors
and the test corpus generator share one implementation and the tests can check it against the
published examples of each standard.
"""

from __future__ import annotations

import datetime
from typing import Final

# ISO 13616 IBAN lengths per country (SWIFT IBAN registry).
IBAN_LENGTHS: Final[dict[str, int]] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip

# GB/T 2260 province-level codes: the first two digits of a resident ID's region code.
_PROVINCE_CODES: Final = (
    11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 50, 51,
    52, 53, 54, 61, 62, 63, 64, 65, 71, 81, 82, 83, 91,
)  # fmt: skip
CN_PROVINCES: Final[frozenset[str]] = frozenset(str(code) for code in _PROVINCE_CODES)
_CN_WEIGHTS: Final = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_CHECK: Final = "10X98765432"


# Luhn on bytes: every other digit from the right as is, the others doubled (and 9 taken off
# when that gives two digits), each table giving the value to add for the ASCII digit.
_LUHN_AS_IS: Final = bytes.maketrans(b"0123456789", bytes(range(10)))
_LUHN_DOUBLED: Final = bytes.maketrans(b"0123456789", bytes((0, 2, 4, 6, 8, 1, 3, 5, 7, 9)))


def luhn_ok(digits: str) -> bool:
    """ISO/IEC 7812 Luhn check over a string of ASCII digits (the check digit last).

    ASCII digits are summed in C (``bytes.translate`` to digit values, then ``sum``), about 3x
    faster than a loop per digit; anything else takes the loop, whose answer for non-ASCII
    input the detectors have always relied on.
    """
    if digits.isascii() and digits.isdigit():
        raw = digits.encode("ascii")[::-1]
        as_is = sum(raw[0::2].translate(_LUHN_AS_IS))
        return (as_is + sum(raw[1::2].translate(_LUHN_DOUBLED))) % 10 == 0
    return _luhn_ok_loop(digits)


def _luhn_ok_loop(digits: str) -> bool:
    """``luhn_ok`` one character at a time (``ord(ch) - 48`` even for non-ASCII digits)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def luhn_check_digit(payload: str) -> str:
    """The digit that makes ``payload + digit`` pass ``luhn_ok`` (for generating test data)."""
    for candidate in "0123456789":
        if luhn_ok(payload + candidate):
            return candidate
    raise AssertionError("unreachable: one of ten digits always completes a Luhn sum")


def iban_ok(compact: str) -> bool:
    """ISO 13616 / ISO 7064 MOD 97-10 over an IBAN without spaces, upper case.

    Checks the country's registered length too: a wrong length with a lucky remainder is not an
    IBAN.
    """
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact.isascii():
        return False
    if not compact[2:4].isdigit() or not compact.isalnum():
        return False
    # ASCII letters and digits only, here: the whole number at once, as Python's big integers
    # allow, instead of ``iban_remainder``'s loop per character (same value, 5x faster).
    return int((compact[4:] + compact[:4]).translate(_IBAN_LETTER_VALUES)) % 97 == 1


# A=10 ... Z=35, either case, as ``iban_remainder`` reads letters.
_IBAN_LETTER_VALUES: Final = {
    ord(letter): str(value)
    for value, upper in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ", start=10)
    for letter in (upper, upper.lower())
}


def iban_remainder(rearranged: str) -> int:
    """Letters to numbers (A=10 ... Z=35), then the value modulo 97, computed piecewise."""
    remainder = 0
    for ch in rearranged:
        value = ord(ch) - 48 if ch.isdigit() else ord(ch.upper()) - 55
        remainder = (remainder * (100 if value > 9 else 10) + value) % 97
    return remainder


def iban_check_digits(country: str, bban: str) -> str:
    """The two check digits for ``country`` and ``bban`` (for generating test data)."""
    return f"{98 - iban_remainder(bban + country + '00'):02d}"


def cn_id_check_char(first17: str) -> str:
    """GB 11643-1999 check character (ISO 7064 MOD 11-2) for the first 17 digits."""
    total = sum(int(ch) * w for ch, w in zip(first17, _CN_WEIGHTS, strict=True))
    return _CN_CHECK[total % 11]


def cn_id_ok(candidate: str) -> bool:
    """A plausible 18-character resident ID: province, real birth date, right check character."""
    if len(candidate) != 18 or not candidate[:17].isdigit() or not candidate.isascii():
        return False
    if candidate[:2] not in CN_PROVINCES:
        return False
    try:
        datetime.date(int(candidate[6:10]), int(candidate[10:12]), int(candidate[12:14]))
    except ValueError:
        return False
    if not 1900 <= int(candidate[6:10]) <= 2099:
        return False
    return cn_id_check_char(candidate[:17]) == candidate[17].upper()

"""IPv4 and IPv6 addresses: a loose regex finds candidates, ``ipaddress`` decides.

The regex only has to be cheap and never miss; the standard library knows the grammar exactly
(IPv4 octets up to 255 without leading zeros, IPv6 group counts, ``::`` compression, an embedded
IPv4 tail, a zone id). Dotted runs of more than four numbers (OIDs, ``1.2.3.4.5``) and colon runs
glued to letters (``std::vector``) are not candidates. Times (``14:23:05``) and MAC addresses are
candidates that ``ipaddress`` rejects.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from typing import Final

from .base import Span, TextFeatures

IP: Final = "net.ip"

_IPV4_RE: Final = re.compile(r"(?<![0-9A-Za-z.])(?:\d{1,3}\.){3}\d{1,3}(?![0-9A-Za-z])(?!\.[0-9])")
_IPV6_RE: Final = re.compile(
    r"(?<![0-9A-Za-z.])(?<![0-9A-Fa-f.:]:)"  # not inside a longer run; "ip:fe80::1" is fine
    r"(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{0,4})"
    r"(?:%[0-9A-Za-z]{1,16})?"
    r"(?![0-9A-Za-z:])(?!\.[0-9])"
)


class IpDetector:
    """IPv4 and IPv6 addresses as ``ipaddress`` parses them."""

    labels: Final = frozenset({IP})

    def wants(self, features: TextFeatures) -> bool:
        """IPv4 needs dots and 4 digits; IPv6 needs colons."""
        return (features.has_dot and features.digits >= 4) or features.has_colon

    def find(self, text: str) -> Iterator[Span]:
        """Every valid address; an IPv6 candidate needs at least one hex digit (not bare ``::``)."""
        if "." in text:
            for m in _IPV4_RE.finditer(text):
                try:
                    ipaddress.IPv4Address(m.group())
                except ValueError:
                    continue
                yield Span(IP, m.start(), m.end())
        if ":" in text:
            for m in _IPV6_RE.finditer(text):
                found = _ipv6_within(m.group())
                if found is not None:
                    yield Span(IP, m.start() + found[0], m.start() + found[1])


def _ipv6_within(candidate: str) -> tuple[int, int] | None:
    """The offsets of a valid address in ``candidate``, or None.

    The candidate may carry one stray colon of the surrounding text (``note:fe80::1``, or a
    trailing ``:`` ending a sentence); it is dropped if the address is valid without it.
    """
    start, end = 0, len(candidate)
    for _ in range(3):
        address = candidate[start:end]
        if address.strip(":") and _valid_ipv6(address):
            return start, end
        if address.startswith(":") and not address.startswith("::"):
            start += 1
        elif address.endswith(":") and not address.endswith("::"):
            end -= 1
        else:
            return None
    return None


def _valid_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True

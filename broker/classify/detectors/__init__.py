"""Detectors of sensitive entities inside strings, and the label vocabulary they use.

Labels are dotted and hierarchical so that a policy can act on a family with one prefix test
(``startswith(label, "secret.")``). The vocabulary (``LABELS``):

==========================  ==============================================================
``pii.email``               e-mail address
``pii.phone``               phone number (international ``+CC``; US, UK, DE, FR, CN formats)
``pci.card``                payment card number (IIN table + Luhn)
``finance.iban``            IBAN (country length + MOD 97-10)
``pii.national_id.cn``      PRC resident identity number (GB 11643-1999 check character)
``pii.national_id.us_ssn``  US Social Security number (never-issued ranges excluded)
``net.ip``                  IPv4 or IPv6 address
``secret.private_key``      PEM private key block
``secret.jwt``              JSON Web Token
``secret.cloud_key``        AWS access key id, Google API key
``secret.api_token``        GitHub, Slack, Stripe live tokens
``scan.truncated``          the part of a string beyond the scan cap, not scanned
==========================  ==============================================================
"""

from __future__ import annotations

import functools
from typing import Final

from broker.classify.detectors.base import (
    LABEL_PRIORITY,
    Detector,
    Span,
    TextFeatures,
    resolve_overlaps,
)
from broker.classify.detectors.contact import EmailDetector, PhoneDetector
from broker.classify.detectors.financial import CardDetector, IbanDetector
from broker.classify.detectors.national_id import CnResidentIdDetector, UsSsnDetector
from broker.classify.detectors.network import IpDetector
from broker.classify.detectors.scan import DEFAULT_MAX_SCAN_CHARS, TRUNCATED, DetectorSet
from broker.classify.detectors.secrets import (
    JwtDetector,
    PrivateKeyDetector,
    TokenDetector,
)

#: Every label the default detectors can report, with what it means.
LABELS: Final[dict[str, str]] = {
    "pii.email": "e-mail address",
    "pii.phone": "phone number",
    "pci.card": "payment card number",
    "finance.iban": "IBAN",
    "pii.national_id.cn": "PRC resident identity number",
    "pii.national_id.us_ssn": "US Social Security number",
    "net.ip": "IPv4 or IPv6 address",
    "secret.private_key": "PEM private key block",
    "secret.jwt": "JSON Web Token",
    "secret.cloud_key": "cloud access key (AWS access key id, Google API key)",
    "secret.api_token": "API token (GitHub, Slack, Stripe live key)",
    TRUNCATED: "part of a string beyond the scan cap, not scanned",
}


def all_detectors() -> tuple[Detector, ...]:
    """One instance of every built-in detector, in a fixed order."""
    return (
        PrivateKeyDetector(),
        JwtDetector(),
        TokenDetector(),
        CnResidentIdDetector(),
        UsSsnDetector(),
        CardDetector(),
        IbanDetector(),
        EmailDetector(),
        PhoneDetector(),
        IpDetector(),
    )


@functools.cache
def default_detector_set(max_scan_chars: int = DEFAULT_MAX_SCAN_CHARS) -> DetectorSet:
    """The shared set of every built-in detector (cached per cap: detectors are stateless)."""
    return DetectorSet(all_detectors(), max_scan_chars=max_scan_chars)


__all__ = [
    "DEFAULT_MAX_SCAN_CHARS",
    "LABELS",
    "LABEL_PRIORITY",
    "TRUNCATED",
    "Detector",
    "DetectorSet",
    "Span",
    "TextFeatures",
    "all_detectors",
    "default_detector_set",
    "resolve_overlaps",
]

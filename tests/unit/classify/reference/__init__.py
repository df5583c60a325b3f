"""A frozen copy of the detectors as they were before the speed work (commit d441b22).

The production detectors were rewritten for speed: leading look-behinds moved after the first
character so that ``re`` can skip to candidate characters in C, e-mail addresses anchored on
their ``@``, cheaper text features and early exits. Each rewrite is meant to change nothing
about what is found. ``test_equivalence`` holds them to that: the production set and this copy
must report identical spans on the metrics corpus and on random entity-dense text.

Do not edit these modules to make a test pass: they are the specification of the old behaviour.
A deliberate change of detection belongs in the production detectors *and* here, in one commit.
Two such changes so far, both pre-filters that skipped real findings: ``PrivateKeyDetector``
asked for 31 characters where the shortest BEGIN line has 27, and ``TokenDetector`` for 20 where
the shortest Slack token its pattern accepts has 14; both copies now ask for 27 and 14.
"""

from __future__ import annotations

import functools
from typing import Final

from .base import (
    LABEL_PRIORITY,
    Detector,
    Span,
    TextFeatures,
    resolve_overlaps,
)
from .contact import EmailDetector, PhoneDetector
from .financial import CardDetector, IbanDetector
from .national_id import CnResidentIdDetector, UsSsnDetector
from .network import IpDetector
from .scan import DEFAULT_MAX_SCAN_CHARS, TRUNCATED, DetectorSet
from .secrets import (
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

"""Secrets: private key blocks, JWTs, cloud access keys and API tokens.

Each format has a fixed, vendor-chosen prefix, so these detectors pre-filter on the prefixes
(``str.__contains__`` runs at C speed) and only then run one combined regex. Labels:

- ``secret.private_key``: a PEM block ``-----BEGIN [...] PRIVATE KEY-----`` (RSA, EC, DSA,
  OPENSSH, ENCRYPTED, PKCS#8) up to its END line, or to the end of the base64 body if the END line
  is missing (a truncated key is still a leaked key). Public keys and certificates are not secrets.
- ``secret.jwt``: three base64url segments whose first one decodes to a JSON object with an
  ``alg`` member (the signature may be empty, for ``alg: none``).
- ``secret.cloud_key``: AWS access key ids (``AKIA``/``ASIA`` + 16), Google API keys
  (``AIza`` + 35).
- ``secret.api_token``: GitHub tokens (``ghp_``, ``gho_``, ``ghu_``, ``ghs_``, ``ghr_`` + 36;
  ``github_pat_`` fine-grained), Slack tokens (``xox[abprs]-`` with dash-separated parts), Stripe
  live secret and restricted keys (``sk_live_``, ``rk_live_``). Publishable keys (``pk_live_``)
  are public by design and not reported.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import re
from collections.abc import Iterator
from typing import Final

from broker.classify.detectors.base import Span, TextFeatures

PRIVATE_KEY: Final = "secret.private_key"
JWT: Final = "secret.jwt"
CLOUD_KEY: Final = "secret.cloud_key"
API_TOKEN: Final = "secret.api_token"  # noqa: S105 - a label name, not a credential

_PEM_BEGIN_RE: Final = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
_PEM_END_RE: Final = re.compile(r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----")
# The base64 body of a block whose END line is missing: lines of 16+ base64 characters, split by
# real newlines or by the two characters backslash-n of a doubly escaped string.
_PEM_BODY_RE: Final = re.compile(r"(?:(?:\s|\\n)+[A-Za-z0-9+/=]{16,})*")
# Both patterns match their first characters before the look-behind so that ``re`` can skip to
# candidates in C (see ``national_id._CN_ID_RE``): ``ey`` is a literal prefix ``re`` searches for
# directly; the token branches each start after one of the first characters ``A g x s r``.
_JWT_RE: Final = re.compile(
    r"(?P<header>ey(?<![A-Za-z0-9_\-]ey)[A-Za-z0-9_\-]{8,})\.[A-Za-z0-9_\-]{2,}\.[A-Za-z0-9_\-]*"
    r"(?![A-Za-z0-9_\-])"
)
_TOKEN_RE: Final = re.compile(
    r"[Agxsr](?<![A-Za-z0-9_\-][Agxsr])(?:"
    r"(?<=A)(?P<cloud>(?:KIA|SIA)[A-Z0-9]{16}|Iza[0-9A-Za-z_\-]{35})"
    r"|(?<=g)h[pousr]_[A-Za-z0-9]{36}"
    r"|(?<=g)ithub_pat_[A-Za-z0-9_]{60,255}"
    r"|(?<=x)ox[abprs]-[A-Za-z0-9]{6,}(?:-[A-Za-z0-9]{2,}){1,6}"
    r"|(?<=[sr])k_live_[0-9A-Za-z]{24,99}"
    r")(?![A-Za-z0-9_\-])"
)


class PrivateKeyDetector:
    """PEM private key blocks."""

    labels: Final = frozenset({PRIVATE_KEY})
    min_length: Final = 27  # the shortest BEGIN line

    def wants(self, features: TextFeatures) -> bool:
        """The shortest BEGIN line, ``-----BEGIN PRIVATE KEY-----``, is 27 characters long.

        (This said 31 until the equivalence tests caught it skipping short truncated blocks.)
        """
        return features.length >= 27 and features.has_dash

    def find(self, text: str) -> Iterator[Span]:
        """Every block from its BEGIN line to the next END line (or the end of its body).

        END lines are located once and looked up by bisection, so a text of many BEGIN lines
        and no END line costs one pass, not one pass per BEGIN.
        """
        if "PRIVATE KEY-----" not in text:
            return
        end_lines = [m.span() for m in _PEM_END_RE.finditer(text)]
        end_starts = [start for start, _ in end_lines]
        covered = 0
        for m in _PEM_BEGIN_RE.finditer(text):
            if m.start() < covered:
                continue
            i = bisect.bisect_left(end_starts, m.end())
            if i < len(end_lines):
                covered = end_lines[i][1]
            else:
                body = _PEM_BODY_RE.match(text, m.end())
                covered = body.end() if body is not None else m.end()
            yield Span(PRIVATE_KEY, m.start(), covered)


class JwtDetector:
    """Compact-serialised JWS/JWT whose header is JSON with ``alg``."""

    labels: Final = frozenset({JWT})
    min_length: Final = 14  # ``ey`` + 8, a dot, 2, a dot

    def wants(self, features: TextFeatures) -> bool:
        """Two dots and some length."""
        return features.has_dot and features.length >= 16

    def find(self, text: str) -> Iterator[Span]:
        """Every token whose header decodes."""
        if "ey" not in text:
            return
        for m in _JWT_RE.finditer(text):
            if _jwt_header_ok(m.group("header")):
                yield Span(JWT, m.start(), m.end())


def _jwt_header_ok(segment: str) -> bool:
    """True if the base64url segment decodes to a JSON object with a string ``alg``."""
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        header = json.loads(raw)
    except (binascii.Error, ValueError):
        return False
    return isinstance(header, dict) and isinstance(header.get("alg"), str)


def _may_hold_token(text: str) -> bool:
    """False only if no vendor prefix (``AKIA ASIA AIza gh?_ github_pat_ xox k_live_``) occurs.

    At most seven substring tests instead of eleven, and usually four: the GitHub and Stripe
    prefixes all contain ``_`` (a one-character ``memchr``), which most text does not.
    """
    return (
        ("_" in text and ("gh" in text or "github_pat_" in text or "k_live_" in text))
        or "xox" in text
        or "AKIA" in text
        or "ASIA" in text
        or "AIza" in text
    )


class TokenDetector:
    """Cloud access keys and API tokens with a vendor prefix."""

    labels: Final = frozenset({CLOUD_KEY, API_TOKEN})
    min_length: Final = 14  # ``xoxb-123456-12``

    def wants(self, features: TextFeatures) -> bool:
        """The shortest token the pattern accepts (Slack, ``xoxb-123456-12``) is 14 characters.

        (This said 20, the AWS key id, until the equivalence tests caught it skipping a field
        that held nothing but a short Slack token.)
        """
        return features.length >= 14

    def find(self, text: str) -> Iterator[Span]:
        """Every token with a known prefix and the right length and alphabet."""
        if not _may_hold_token(text):
            return
        for m in _TOKEN_RE.finditer(text):
            label = CLOUD_KEY if m.group("cloud") is not None else API_TOKEN
            yield Span(label, m.start(), m.end())

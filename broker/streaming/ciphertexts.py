"""Open this call's ``encrypt``-ed values in streamed text, even when split across chunks.

An ``encrypt`` action puts ``enc:v1:<key id>:<base64url>`` in the request the model sees. If
the model repeats it, the buyer gets its own value back, as with ``Invoke``. Unlike a vault
token, a ciphertext has no fixed length (it grows with the value), so the restorer cannot hold
back "anything that could still become one": a model could then make the broker buffer without
bound. Instead it is given the **exact ciphertexts issued in this call** (for this tenant) and
holds back only a suffix that is still a prefix of one of them:

- a start of the marker ``enc:v1:`` at the very end (``e``, ``en``... 6 characters at most), or
- text from an ``enc:v1:`` to the end that is a proper prefix of an issued ciphertext, or a
  whole issued ciphertext at the end (the next character tells whether it ends there).

So it holds back at most the length of the longest ciphertext issued in this call
(``max_hold``; 91 characters for a 20-character value, see ``README.md``), only while such text
is arriving, and nothing at all in a call that encrypted nothing (the stage is then left out).
Whatever the model sends, the bound is set by the buyer's request, never by the model.

**Which occurrences are opened.** An issued ciphertext that is not followed by a base64url
character (a ciphertext followed by more of them is a different string, as for ``Invoke``'s
pattern). ``open_ciphertexts`` gives that result for a whole text; the tests check that every
split of a text gives the same. Anything else stays text: a ciphertext of another call (even of
the same tenant: ``Invoke`` would open that one, a stream does not), of another tenant, a forged
or altered one, or one that does not open (``opener`` returns None).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Final

from broker.enforce import transforms
from broker.enforce.keys import TenantKeys
from broker.errors import InvalidArgument

MARKER: Final = transforms.ENCRYPTED_PREFIX
_BODY_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")

Opener = Callable[[str], str | None]
"""The buyer's text of one issued ciphertext, or None if it does not open."""


def ciphertext_opener(keys: TenantKeys, tenant: str) -> Opener:
    """An ``Opener`` with ``tenant``'s key: what ``Invoke``'s restorer does for one ciphertext."""

    def open_(ciphertext: str) -> str | None:
        try:
            value = transforms.decrypt_value(
                keys.key(tenant, "encrypt"), keys.key_id, tenant, ciphertext
            )
        except InvalidArgument:
            return None
        return transforms.value_text(value)

    return open_


def open_ciphertexts(text: str, issued: Collection[str], open_: Opener) -> tuple[str, int]:
    """The non-streamed result: every issued ciphertext in ``text`` opened; and how many."""
    longest_first = sorted(_usable(issued), key=len, reverse=True)
    if not longest_first:
        return text, 0
    alternatives = "|".join(re.escape(c) for c in longest_first)
    pattern = re.compile(f"(?:{alternatives})(?![A-Za-z0-9_-])")
    count = 0

    def substitute(match: re.Match[str]) -> str:
        nonlocal count
        opened = open_(match.group(0))
        if opened is None:
            return match.group(0)
        count += 1
        return opened

    return pattern.sub(substitute, text), count


class CiphertextRestorer:
    """Feed it the answer's text in order; it opens the issued ciphertexts as soon as it can.

    Not thread-safe (one instance per stream and text channel). ``restored`` counts the values
    opened so far; each ciphertext is decrypted at most once per instance.
    """

    def __init__(self, issued: Collection[str], open_: Opener) -> None:
        self._issued = tuple(sorted(_usable(issued)))
        self._open = open_
        self._opened: dict[str, str | None] = {}
        self._held = ""
        self._finished = False
        self.restored = 0
        self.max_hold: Final = max((len(c) for c in self._issued), default=0)
        """The most characters this stage ever holds back: the longest issued ciphertext."""

    @property
    def held(self) -> int:
        """How many characters are currently held back (at most ``max_hold``)."""
        return len(self._held)

    def feed(self, chunk: str) -> str:
        """Take the next chunk; return the text that can be released now (may be "")."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        text = self._held + chunk
        if not self._issued or "e" not in text:  # nothing that could even start a ciphertext
            self._held = ""
            return text
        out, cut = self._scan(text, final=False)
        self._held = text[cut:]
        return out

    def finish(self) -> str:
        """The end of the answer: open what is held if it is complete, release the rest."""
        self._finished = True
        rest, self._held = self._held, ""
        if not rest or not self._issued:
            return rest
        return self._scan(rest, final=True)[0]

    def _scan(self, text: str, *, final: bool) -> tuple[str, int]:
        """``text`` up to the first undecided position with issued ciphertexts opened; that cut."""
        pieces: list[str] = []
        cursor = position = 0
        while (start := text.find(MARKER, position)) != -1:
            found, pending = self._at(text, start, final=final)
            if pending:
                pieces.append(text[cursor:start])
                return "".join(pieces), start
            if found is None:
                position = start + 1
                continue
            pieces.append(text[cursor:start])
            pieces.append(self._opened_text(found))
            cursor = position = start + len(found)
        cut = len(text) if final else _marker_tail(text, position)
        pieces.append(text[cursor:cut])
        return "".join(pieces), cut

    def _at(self, text: str, start: int, *, final: bool) -> tuple[str | None, bool]:
        """The issued ciphertext at ``start`` (if decided), and whether it is still undecided."""
        remaining = len(text) - start
        for ciphertext in self._issued:
            if text.startswith(ciphertext, start):
                end = start + len(ciphertext)
                if end == len(text):
                    return (ciphertext, False) if final else (None, True)
                if text[end] not in _BODY_CHARS:
                    return ciphertext, False
            elif not final and remaining < len(ciphertext) and ciphertext.startswith(text[start:]):
                return None, True
        return None, False

    def _opened_text(self, ciphertext: str) -> str:
        if ciphertext not in self._opened:
            self._opened[ciphertext] = self._open(ciphertext)
        opened = self._opened[ciphertext]
        if opened is None:
            return ciphertext
        self.restored += 1
        return opened


def _usable(issued: Collection[str]) -> set[str]:
    """The issued strings that can be ciphertexts at all (they start with the marker)."""
    return {c for c in issued if c.startswith(MARKER) and len(c) > len(MARKER)}


def _marker_tail(text: str, position: int) -> int:
    """Where a proper prefix of the marker (``e`` .. ``enc:v1``) ends the text, or its length."""
    for size in range(min(len(MARKER) - 1, len(text) - position), 0, -1):
        if MARKER.startswith(text[-size:]):
            return len(text) - size
    return len(text)

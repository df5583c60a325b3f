"""Restore vault tokens in streamed text, even when a token is split across chunks.

A model streams its answer a few characters at a time, so the token ``TKN-0123456789ABCDEFGHJK``
may arrive as ``...TKN-01`` then ``2345...``. ``StreamingRestorer`` releases text as soon as it
is certain that no token can straddle the release point, and holds back only the shortest
suffix that could still become a token: a suffix that is a *proper prefix* of one (``T``,
``TK``, ``TKN``, ``TKN-``, ``TKN-`` and up to 19 token characters). So it holds back at most
``MAX_TOKEN_HOLD = len("TKN-") + 20 - 1 = 23`` characters, and usually none (only text that
ends in ``T``, ``TK``... is held), which keeps the time to the first chunk at the model's own.

**Same result as the non-streamed answer.** A token is exactly 24 characters from a fixed
alphabet with no look-around, so whether the text at position *i* is a token depends only on
the 24 characters from *i*, and scanning from any point that no token straddles finds the same
tokens as scanning the whole text. ``restore_text`` is that whole-text result; the tests check
that concatenating ``feed`` outputs and ``finish`` equals it, for every split of many texts.

**Who owns a token** is the vault's business: ``resolve`` is called with the tokens found in
released text (one call per chunk that has any; results are remembered for the rest of the
stream, negative ones too) and returns the replacement text of those that belong to this
tenant and call. Anything it does not return, a token the model forged or one from another
call or tenant, stays as text. ``vault_resolver`` builds ``resolve`` from a ``TokenVault``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from typing import Final

from broker.enforce import transforms
from broker.enforce.vault import TOKEN_RE, TokenVault

_PREFIX: Final = "TKN-"
_TOKEN_CHARS: Final = 20
MAX_TOKEN_HOLD: Final = len(_PREFIX) + _TOKEN_CHARS - 1
"""The most characters ``StreamingRestorer`` ever holds back: a token minus its last char."""

# A proper prefix of a token, anchored at the end of the text.
_PARTIAL_RE: Final = re.compile(r"T(?:K(?:N(?:-[0-9A-HJKMNP-TV-Z]{0,19})?)?)?\Z")

Resolver = Callable[[Collection[str]], Mapping[str, str]]
"""Given tokens seen in the answer, the replacement text of those the buyer may see restored."""


def vault_resolver(vault: TokenVault, tenant: str, call_id: str) -> Resolver:
    """A ``Resolver`` for one call: only tokens issued for this tenant and call resolve."""

    def resolve(tokens: Collection[str]) -> Mapping[str, str]:
        found = vault.resolve(tenant, call_id, tokens)
        return {token: transforms.value_text(value) for token, value in found.items()}

    return resolve


def restore_text(text: str, resolve: Resolver) -> tuple[str, int]:
    """The non-streamed result: every resolvable token in ``text`` replaced; and how many."""
    tokens = set(TOKEN_RE.findall(text))
    originals = resolve(tokens) if tokens else {}
    count = 0

    def substitute(match: re.Match[str]) -> str:
        nonlocal count
        original = originals.get(match.group(0))
        if original is None:
            return match.group(0)
        count += 1
        return original

    return TOKEN_RE.sub(substitute, text), count


class StreamingRestorer:
    """Feed it the answer's text chunks in order; it returns restored text as soon as it can.

    Not thread-safe (one instance per stream). ``restored`` counts the tokens restored so far.
    """

    def __init__(self, resolve: Resolver) -> None:
        self._resolve = resolve
        self._known: dict[str, str | None] = {}
        self._held = ""
        self._finished = False
        self.restored = 0

    @property
    def held(self) -> int:
        """How many characters are currently held back (at most ``MAX_TOKEN_HOLD``)."""
        return len(self._held)

    def feed(self, chunk: str) -> str:
        """Take the next chunk; return the text that can be released now (may be "")."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        text = self._held + chunk
        if "T" not in text:  # the common case: nothing that could even start a token
            self._held = ""
            return text
        # Only look for a partial token after the last complete one: a complete token may end
        # with characters (``T``, ``TK``...) that look like the start of another, and a match
        # that starts earlier wins over one that overlaps it, in the whole text as here.
        last_end = 0
        if _PREFIX in text:
            for match in TOKEN_RE.finditer(text):
                last_end = match.end()
        partial = _PARTIAL_RE.search(text, max(last_end, len(text) - MAX_TOKEN_HOLD))
        cut = partial.start() if partial is not None else len(text)
        self._held = text[cut:]
        return self._restore(text[:cut])

    def finish(self) -> str:
        """The end of the answer: release whatever is held (it can no longer become a token)."""
        self._finished = True
        rest, self._held = self._held, ""
        return self._restore(rest)

    def _restore(self, text: str) -> str:
        if "TKN-" not in text:
            return text
        tokens = set(TOKEN_RE.findall(text))
        unknown = [token for token in tokens if token not in self._known]
        if unknown:
            found = self._resolve(unknown)
            for token in unknown:
                self._known[token] = found.get(token)

        def substitute(match: re.Match[str]) -> str:
            original = self._known.get(match.group(0))
            if original is None:
                return match.group(0)
            self.restored += 1
            return original

        return TOKEN_RE.sub(substitute, text)

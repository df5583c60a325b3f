"""Run the entity detectors over streamed text, seeing entities that straddle chunk boundaries.

``StreamingScanner`` keeps a bounded window of the answer: text already released, kept as
*context* (detectors look a few characters behind a match), and text not yet released, the
*pending* part. At each chunk it scans the window, then releases a prefix of the pending text
with the entity action applied to the entities inside it, as far as it is certain that no entity
can cross the release point:

1. **Hold window.** Pending text older than ``max_entity_chars + LOOKAHEAD_CHARS`` is safe: any
   entity that starts in it and is at most ``max_entity_chars`` long ends inside the window,
   with enough text after it for the detectors' look-ahead, so it has been seen whole.
2. **Word breaks.** A whitespace that follows a plain word (letters with at least one lowercase
   letter, at most one punctuation mark around it) ends every entity the detectors know: emails,
   JWTs, keys and IP addresses hold no whitespace, and phone numbers, cards, IBANs and ID numbers
   hold only digits and capitals between their spaces. So does a whitespace *before* a word
   once that word's first lowercase letter has arrived (capitals, then a lowercase letter): no
   detector lets an entity end right before a letter (each right edge refuses ``[0-9A-Za-z]``),
   so no entity reaches into that word, and none crosses the whitespace without doing so. That
   second rule releases a leading ``1.`` or ``42`` as soon as the next word shows itself, not a
   word later. So prose is released word by word, and the time to first chunk stays at the
   model's own. (Not after an unclosed ``-----BEGIN ... PRIVATE KEY-----``, whose block may
   contain anything.)
3. **Hard breaks.** A comma, semicolon, ``!``, ``?``, quote, ``*``, tab or line break ends
   the text before it at once: no entity the detectors know contains one (phone, card, IBAN
   and ID numbers separate their groups with plain spaces, dots, dashes, slashes or
   parentheses only), and no detector looks past one (the look-aheads that read a second
   character start with a space, ``.``, ``-``, ``/`` or ``:``). So ``Sure!`` goes out when
   the ``!`` arrives, not with the next word. (Not inside an unclosed private key block, as
   above: its body may span lines.)
4. **No cut through an entity.** If the release point falls inside an entity found in the
   window, it moves back to the entity's start: the whole entity waits until it is complete.

So at most ``max_hold = 2 * max_entity_chars + LOOKAHEAD_CHARS`` characters are held back
(520 with the default 256): the hold window plus one entity crossing it.

**Beyond the bound.** An entity longer than ``max_entity_chars`` (an e-mail address with a
300-character domain, a PEM private key of 1,700 characters) is outside the guarantee: once
holding it would pass ``max_hold``, text is released anyway, and a detector that does not
recognise the unfinished entity at that moment (an address whose text so far ends in ``.s``
is no valid address yet) cannot protect the part released. What a detector does recognise is
acted on, piece by piece. Deployments whose answers may carry such entities should raise
``max_entity_chars`` (4096 covers PEM keys) or deny those labels in the answer direction.

**Same result as the non-streamed answer**, for texts whose entities are at most
``max_entity_chars`` long: ``scan_text`` is that result, and the tests compare the two for every
split point of many texts and for random multi-splits.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from broker.classify.detectors import DetectorSet, Span

DEFAULT_MAX_ENTITY_CHARS: Final = 256
LOOKAHEAD_CHARS: Final = 8
"""Look-ahead the detectors need after an entity's end (the longest is two characters)."""

EntityAction = Callable[[Span, str], str]
"""Replacement text for one entity (its label, offsets in the whole text, and its text)."""

_PLAIN_WORD_BREAK: Final = re.compile(
    # possessive, with the lowercase test in a look-ahead: linear time on long letter runs
    r"(?<!\S)[\"'(\[]?(?=[A-Za-z]*[a-z])[A-Za-z]++[,.;:!?)\"'\]]?\s"
)
_BREAK_BEFORE_WORD: Final = re.compile(r"\s(?=[A-Z]*[a-z])")
"""A whitespace followed by a word with a lowercase letter (seen up to that letter)."""
_HARD_BREAK: Final = re.compile(r"[,;!?\"'*\t\n\r]")
"""Characters that no entity contains and no detector's look-ahead reads past (rule 3)."""
# The private key detector's BEGIN and END lines (``broker.classify.detectors.secrets``): its
# span runs from a BEGIN line to the next *complete* END line, whatever lies between.
_PEM_BEGIN_LINE: Final = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
_PEM_END_LINE: Final = re.compile(r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----")


def scan_text(text: str, detectors: DetectorSet, action: EntityAction) -> str:
    """The non-streamed result: ``action`` applied to every span ``detectors`` find in ``text``."""
    return _apply(text, detectors.scan(text), action, offset=0, start=0, stop=len(text))[0]


def _apply(
    text: str, spans: list[Span], action: EntityAction, *, offset: int, start: int, stop: int
) -> tuple[str, list[Span]]:
    """``text[start:stop]`` with the spans inside it replaced; offsets shifted by ``offset``."""
    pieces: list[str] = []
    acted: list[Span] = []
    cursor = start
    for span in spans:
        if span.start >= stop or span.end <= start:
            continue
        begin, end = max(span.start, start), min(span.end, stop)
        placed = Span(span.label, offset + begin, offset + end)
        pieces.append(text[cursor:begin])
        pieces.append(action(placed, text[begin:end]))
        acted.append(placed)
        cursor = end
    pieces.append(text[cursor:stop])
    return "".join(pieces), acted


class StreamingScanner:
    """Feed it the answer's text in order; it returns text with entity actions applied.

    Not thread-safe (one instance per stream). ``spans`` lists every entity acted on, with
    offsets in the whole original text (value-free, for the audit entry's counts).
    """

    def __init__(
        self,
        detectors: DetectorSet,
        action: EntityAction,
        *,
        max_entity_chars: int = DEFAULT_MAX_ENTITY_CHARS,
    ) -> None:
        if max_entity_chars < 1:
            raise ValueError("max_entity_chars must be >= 1")
        self._detectors = detectors
        self._action = action
        self.max_entity_chars: Final = max_entity_chars
        self._hold = max_entity_chars + LOOKAHEAD_CHARS
        self.max_hold: Final = 2 * max_entity_chars + LOOKAHEAD_CHARS
        """The most characters this scanner ever holds back."""
        self._context = max_entity_chars
        if detectors.max_scan_chars < self._context + self.max_hold + 1:
            raise ValueError("the detector set's scan cap is smaller than the scanner's window")
        self._buf = ""  # context + pending, original text
        self._boundary = 0  # where pending starts in _buf
        self._base = 0  # offset of _buf[0] in the whole text
        self._finished = False
        self.spans: list[Span] = []

    @property
    def held(self) -> int:
        """How many characters are currently held back."""
        return len(self._buf) - self._boundary

    def feed(self, chunk: str) -> str:
        """Take the next chunk; return the text that can be released now (may be "")."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        self._buf += chunk
        return self._release(final=False)

    def finish(self) -> str:
        """The end of the answer: release everything, with its entities acted on."""
        self._finished = True
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        buf, boundary = self._buf, self._boundary
        if boundary == len(buf):
            return ""
        spans = [s for s in self._detectors.scan(buf) if s.end > boundary]
        cut = len(buf) if final else self._cut(buf, boundary, spans)
        if cut == boundary:
            return ""
        out, acted = _apply(buf, spans, self._action, offset=self._base, start=boundary, stop=cut)
        self.spans.extend(acted)
        keep = max(0, cut - self._context)
        self._base += keep
        self._buf = buf[keep:]
        self._boundary = cut - keep
        return out

    def _cut(self, buf: str, boundary: int, spans: list[Span]) -> int:
        cut = max(
            len(buf) - self._hold,
            self._last_word_break(buf, boundary, at_start=self._base == 0),
            boundary,
        )
        for span in spans:  # non-overlapping: at most one contains the cut
            if span.start < cut < span.end:
                cut = max(span.start, boundary)
                break
        # An entity over max_entity_chars is still growing: past max_hold, release anyway.
        return max(cut, len(buf) - self.max_hold)

    @staticmethod
    def _last_word_break(buf: str, boundary: int, *, at_start: bool) -> int:
        """The last word or hard break (rules 2 and 3 of the module docstring) after
        ``boundary``, or ``boundary``."""
        limit = _unclosed_key_block(buf)
        found = boundary
        # A plain word is shorter than the window, so only its last stretch is worth searching.
        # Position 0 is a word start only at the very start of the answer, not of a window.
        start = max(0 if at_start else 1, boundary - 64)
        for match in _PLAIN_WORD_BREAK.finditer(buf, start, limit):
            found = max(found, match.end())
        for match in _BREAK_BEFORE_WORD.finditer(buf, max(boundary - 1, 0), limit):
            found = max(found, match.end())
        for match in _HARD_BREAK.finditer(buf, boundary, limit):
            found = max(found, match.end())
        return found


def _unclosed_key_block(buf: str) -> int:
    """Where the first private key block in the window without a complete END line starts.

    ``len(buf)`` when there is none. A block's body may hold any break, and it is one entity
    up to its END line, so nothing after its BEGIN line may go out before that line is whole: an
    END line that has only partly arrived (``-----END RSA PRI``) does not close it. A BEGIN
    line that is still arriving holds no break, so it is held without help. The released
    context is searched too: a block whose start was released (only past ``max_hold``) keeps
    everything after it to the hold window, as before.
    """
    for begin in _PEM_BEGIN_LINE.finditer(buf):
        if _PEM_END_LINE.search(buf, begin.end()) is None:
            return begin.start()
    return len(buf)

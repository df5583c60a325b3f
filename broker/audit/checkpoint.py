"""C2SP tlog-checkpoint bodies (c2sp.org/tlog-checkpoint) and their signed-note envelope.

A checkpoint commits the log to one tree head: origin line, decimal tree size, base64 root
hash, optional extension lines, each ending in a newline. Parsing is strict (one spelling per
value: no leading zeros, canonical base64, a 32-byte SHA-256 root), because two texts that
parse to the same head but differ in bytes would carry different signatures and muddle fork
detection. Malformed text raises :class:`~broker.audit.merkle.VerificationError`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass

from broker.audit.merkle import HASH_SIZE, VerificationError
from broker.audit.note import Signer, Verifier, _b64decode_strict, open_note, sign_note

_MAX_SIZE = (1 << 64) - 1
_SIZE_RE = re.compile(r"0|[1-9][0-9]{0,19}")


def _check_line(line: str, what: str) -> None:
    if not isinstance(line, str):
        raise TypeError(f"{what} must be text")
    if not line or any(c < " " for c in line):
        raise ValueError(f"{what} must be a non-empty line without control characters")


@dataclass(frozen=True)
class Checkpoint:
    """One signed tree head of the log: ``origin``, tree ``size``, ``root_hash``, extensions.

    Construction validates the fields (``ValueError`` or ``TypeError`` on misuse);
    :meth:`from_text` parses untrusted text and raises :class:`VerificationError` instead.
    """

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "origin")
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise TypeError("tree size must be an integer")
        if not 0 <= self.size <= _MAX_SIZE:
            raise ValueError(f"tree size {self.size} is outside 0..2**64-1")
        if not isinstance(self.root_hash, bytes):
            raise TypeError("root hash must be bytes")
        if len(self.root_hash) != HASH_SIZE:
            raise ValueError(f"root hash must be {HASH_SIZE} bytes")
        if not isinstance(self.extensions, tuple):
            raise TypeError("extensions must be a tuple of lines")
        for line in self.extensions:
            _check_line(line, "extension line")

    def to_text(self) -> str:
        """The note text: one field per line, every line ending in a newline."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode("ascii")]
        return "".join(f"{line}\n" for line in (*lines, *self.extensions))

    @classmethod
    def from_text(cls, text: str) -> Checkpoint:
        """Parse a checkpoint body strictly (the text of an already opened note)."""
        if not isinstance(text, str):
            raise VerificationError("checkpoint must be text")
        if not text.endswith("\n"):
            raise VerificationError("checkpoint must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise VerificationError("checkpoint needs origin, size and root hash lines")
        origin, size_text, root_text, *extensions = lines
        if not _SIZE_RE.fullmatch(size_text) or int(size_text) > _MAX_SIZE:
            raise VerificationError("checkpoint tree size is not a canonical uint64")
        root = _b64decode_strict(root_text, "checkpoint root hash")
        if len(root) != HASH_SIZE:
            raise VerificationError(f"checkpoint root hash is not {HASH_SIZE} bytes")
        try:
            return cls(origin, int(size_text), root, tuple(extensions))
        except (ValueError, TypeError) as exc:
            raise VerificationError(f"malformed checkpoint: {exc}") from exc


def sign_checkpoint(checkpoint: Checkpoint, *signers: Signer) -> str:
    """The checkpoint as a signed note, ready to publish and store."""
    return sign_note(checkpoint.to_text(), *signers)


def open_checkpoint(
    text: str | bytes, verifiers: Iterable[Verifier], *, origin: str | None = None
) -> tuple[Checkpoint, tuple[str, ...]]:
    """Verify a signed checkpoint and parse it; return it with the names that signed it.

    Passing ``origin`` also rejects a checkpoint of another log, such as a receipt presented
    against the wrong log. Callers that need a quorum check the returned names themselves.
    """
    body, verified = open_note(text, verifiers)
    checkpoint = Checkpoint.from_text(body)
    if origin is not None and checkpoint.origin != origin:
        raise VerificationError(f"checkpoint is for log {checkpoint.origin!r}, not {origin!r}")
    return checkpoint, verified

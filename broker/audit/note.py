"""C2SP signed notes (c2sp.org/signed-note) with Ed25519 keys and cosignature/v1 witnesses.

A signed note is UTF-8 text ending in a newline, a blank line, then signature lines
``— <key name> <base64(key ID || signature)>``. Checkpoints travel inside one, so this is the
layer that decides whether a checkpoint may be believed at all.

Verification follows the spec's rules (section "Signatures"): a signature is matched to a
known key by the pair (key name, key ID); signatures from unknown keys are ignored, even if
they share a name or an ID with a known one; a known key whose signature fails rejects the
whole note; a note with no verified signature is rejected. Everything from untrusted input
fails with the one :class:`~broker.audit.merkle.VerificationError`.

Key strings follow golang.org/x/mod/sumdb/note, which the C2SP spec takes its format from:
``<name>+<hex key ID>+<base64(type || public key)>`` for a verifier key (vkey) and
``PRIVATE+KEY+<name>+<hex key ID>+<base64(type || seed)>`` for a signer key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.audit.merkle import VerificationError

SIG_TYPE_ED25519 = 0x01
"""Signature type byte of plain Ed25519 note signatures (signed-note, "Signature types")."""
SIG_TYPE_COSIGNATURE_V1 = 0x04
"""Signature type byte of timestamped Ed25519 witness cosignatures (c2sp.org/tlog-cosignature)."""

MAX_SIGNATURES = 100
"""More signature lines than this reject the note (the spec asks verifiers for at least 16)."""
MAX_NOTE_BYTES = 1 << 20
"""Notes larger than this are refused before any parsing work."""

_EM_DASH_PREFIX = "\u2014 "
_SKEY_PREFIX = "PRIVATE+KEY+"
_ED25519_KEY_SIZE = 32
_ED25519_SIG_SIZE = 64
_TIMESTAMP_SIZE = 8
_KNOWN_SIG_TYPES = (SIG_TYPE_ED25519, SIG_TYPE_COSIGNATURE_V1)


def key_id(name: str, sig_type: int, public_key: bytes) -> int:
    """``SHA-256(name || 0x0A || type || public key)[:4]`` as a big-endian uint32."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([sig_type]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def is_valid_key_name(name: str) -> bool:
    """Key names are non-empty UTF-8, with no Unicode space and no ``+`` (signed-note, "Format").

    A ``str`` may hold lone surrogates (a key given on a command line that is not UTF-8 arrives
    so), which no UTF-8 text holds: such a name is invalid, not a ``UnicodeEncodeError`` later.
    """
    if not name or "+" in name or any(c.isspace() or c < " " for c in name):
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _b64decode_strict(text: str, what: str) -> bytes:
    """Standard base64 with padding, canonical only, so one value has one encoding."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise VerificationError(f"{what} is not valid base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise VerificationError(f"{what} is not canonical base64")
    return raw


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _split_key(text: str, what: str) -> tuple[str, int, bytes]:
    """Parse ``name+hexid+base64`` and check the ID's syntax (base64 may itself hold ``+``)."""
    fields = text.split("+", 2)
    if len(fields) != 3:
        raise VerificationError(f"{what} must have the form name+keyid+key")
    name, hex_id, b64 = fields
    if not is_valid_key_name(name):
        raise VerificationError(f"{what} has an invalid key name")
    if len(hex_id) != 8 or any(c not in "0123456789abcdef" for c in hex_id):
        raise VerificationError(f"{what} key ID must be 8 lowercase hex digits")
    raw = _b64decode_strict(b64, f"{what} key")
    if len(raw) != 1 + _ED25519_KEY_SIZE or raw[0] not in _KNOWN_SIG_TYPES:
        raise VerificationError(f"{what} is not an Ed25519 or cosignature/v1 key")
    return name, int(hex_id, 16), raw


@dataclass(frozen=True)
class Verifier:
    """A trusted public key: name, key ID, signature type and raw Ed25519 public key.

    ``SIG_TYPE_ED25519`` verifies plain note signatures over the note text;
    ``SIG_TYPE_COSIGNATURE_V1`` verifies witness cosignatures, whose signed message is
    ``cosignature/v1\\ntime <timestamp>\\n`` followed by the checkpoint text.
    """

    name: str
    key_id: int
    sig_type: int
    public_key: bytes

    @classmethod
    def from_public_key(
        cls, name: str, public_key: bytes, sig_type: int = SIG_TYPE_ED25519
    ) -> Verifier:
        """Build a verifier from a raw 32-byte Ed25519 public key, deriving the key ID."""
        if not is_valid_key_name(name):
            raise ValueError(f"invalid key name {name!r}")
        if sig_type not in _KNOWN_SIG_TYPES or len(public_key) != _ED25519_KEY_SIZE:
            raise ValueError("expected a 32-byte Ed25519 key of a supported signature type")
        return cls(name, key_id(name, sig_type, public_key), sig_type, bytes(public_key))

    @classmethod
    def from_vkey(cls, vkey: str) -> Verifier:
        """Parse ``<name>+<hex key ID>+<base64(type || public key)>``; the ID must match."""
        if not isinstance(vkey, str):
            raise VerificationError("a verifier key must be text")
        name, kid, raw = _split_key(vkey, "verifier key")
        verifier = cls(name, kid, raw[0], raw[1:])
        if key_id(name, raw[0], raw[1:]) != kid:
            raise VerificationError(f"verifier key {name!r} has a key ID that does not match")
        return verifier

    def to_vkey(self) -> str:
        """Format as a vkey string, the form operators publish and auditors configure."""
        key = _b64encode(bytes([self.sig_type]) + self.public_key)
        return f"{self.name}+{self.key_id:08x}+{key}"

    def verify(self, text: bytes, signature: bytes) -> bool:
        """Whether ``signature`` (without the key ID) is this key's over the note ``text``."""
        if self.sig_type == SIG_TYPE_COSIGNATURE_V1:
            if len(signature) != _TIMESTAMP_SIZE + _ED25519_SIG_SIZE:
                return False
            timestamp = int.from_bytes(signature[:_TIMESTAMP_SIZE], "big")
            if timestamp >= 1 << 63:
                return False
            text = b"cosignature/v1\ntime %d\n" % timestamp + text
            signature = signature[_TIMESTAMP_SIZE:]
        elif len(signature) != _ED25519_SIG_SIZE:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, text)
        except (InvalidSignature, ValueError):
            return False
        return True


class Signer:
    """An Ed25519 note signing key. Its ``repr`` never shows the private key."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        if not is_valid_key_name(name):
            raise ValueError(f"invalid key name {name!r}")
        self._name = name
        self._key = private_key
        public = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._verifier = Verifier.from_public_key(name, public)

    @classmethod
    def generate(cls, name: str) -> Signer:
        """A fresh random key named ``name``."""
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_skey(cls, skey: str) -> Signer:
        """Parse ``PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || seed)>``."""
        if not isinstance(skey, str) or not skey.startswith(_SKEY_PREFIX):
            raise VerificationError("a signer key must start with PRIVATE+KEY+")
        name, kid, raw = _split_key(skey[len(_SKEY_PREFIX) :], "signer key")
        if raw[0] != SIG_TYPE_ED25519:
            raise VerificationError("only Ed25519 signer keys are supported")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if signer.key_id != kid:
            raise VerificationError(f"signer key {name!r} has a key ID that does not match")
        return signer

    def to_skey(self) -> str:
        """Format as a signer key string (a secret: store it like one)."""
        seed = self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        key = _b64encode(bytes([SIG_TYPE_ED25519]) + seed)
        return f"{_SKEY_PREFIX}{self._name}+{self.key_id:08x}+{key}"

    @property
    def name(self) -> str:
        """The key name written in signature lines."""
        return self._name

    @property
    def key_id(self) -> int:
        """The 32-bit key ID that prefixes each signature."""
        return self._verifier.key_id

    def verifier(self) -> Verifier:
        """The matching public key, to publish or to verify our own notes."""
        return self._verifier

    def sign(self, text: bytes) -> bytes:
        """Raw 64-byte Ed25519 signature over ``text`` (deterministic, RFC 8032)."""
        return self._key.sign(text)

    def __repr__(self) -> str:
        return f"Signer(name={self._name!r}, key_id={self.key_id:08x})"


class OpenedNote(NamedTuple):
    """A note whose signatures checked out: its text and the names of the keys that signed."""

    body: str
    verified: tuple[str, ...]


def _check_text_chars(text: str) -> None:
    """UTF-8 without ASCII control characters other than newline (signed-note, "Format")."""
    if any(c < " " and c != "\n" for c in text):
        raise VerificationError("note contains a control character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise VerificationError("note is not valid UTF-8") from exc


def sign_note(body: str, *signers: Signer) -> str:
    """Sign ``body`` (text ending in a newline) with each signer; return the signed note."""
    if not signers:
        raise ValueError("at least one signer is needed")
    if not body.endswith("\n"):
        raise ValueError("note text must end with a newline")
    try:
        _check_text_chars(body)
    except VerificationError as exc:
        raise ValueError(str(exc)) from exc
    message = body.encode()
    lines = [
        f"{_EM_DASH_PREFIX}{s.name} {_b64encode(s.key_id.to_bytes(4, 'big') + s.sign(message))}\n"
        for s in signers
    ]
    return body + "\n" + "".join(lines)


def _index_verifiers(verifiers: Iterable[Verifier]) -> dict[tuple[str, int], Verifier]:
    known: dict[tuple[str, int], Verifier] = {}
    for v in verifiers:
        if not isinstance(v, Verifier):
            raise VerificationError("verifiers must be Verifier objects")
        if known.setdefault((v.name, v.key_id), v) != v:
            raise VerificationError(f"two different keys named {v.name!r} share key ID")
    return known


def _decode_note(text: object) -> str:
    """Size limit, UTF-8 and character rules, before any parsing work."""
    if isinstance(text, bytes):
        if len(text) > MAX_NOTE_BYTES:
            raise VerificationError("note is too large")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise VerificationError("note is not valid UTF-8") from exc
    if not isinstance(text, str):
        raise VerificationError("note must be text")
    if len(text) > MAX_NOTE_BYTES:
        raise VerificationError("note is too large")
    _check_text_chars(text)
    return text


def _parse_signature_line(line: str, number: int) -> tuple[str, int, bytes]:
    """``— <name> <base64(key ID || signature)>`` into name, key ID and signature."""
    if not line.startswith(_EM_DASH_PREFIX):
        raise VerificationError(f"signature line {number} does not start with an em dash")
    name, _, b64 = line[len(_EM_DASH_PREFIX) :].partition(" ")
    if not is_valid_key_name(name) or not b64:
        raise VerificationError(f"signature line {number} is malformed")
    raw = _b64decode_strict(b64, f"signature line {number}")
    if len(raw) < 5:
        raise VerificationError(f"signature line {number} is too short")
    return name, int.from_bytes(raw[:4], "big"), raw[4:]


def open_note(text: str | bytes, verifiers: Iterable[Verifier]) -> OpenedNote:
    """Parse a signed note and verify it against trusted ``verifiers``.

    Returns the note text (ending in a newline) and the names of the known keys whose
    signatures verified, in order of appearance. Raises :class:`VerificationError` if the note
    is malformed, if a known key's signature fails, or if no known key signed it.
    """
    known = _index_verifiers(verifiers)
    text = _decode_note(text)
    split = text.rfind("\n\n")
    if split < 0:
        raise VerificationError("note has no blank line before its signatures")
    body, block = text[: split + 1], text[split + 2 :]
    if not block.endswith("\n"):
        raise VerificationError("note signatures must end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise VerificationError(f"note has more than {MAX_SIGNATURES} signatures")
    message = body.encode()
    verified: list[str] = []
    for number, line in enumerate(lines, start=1):
        name, kid, signature = _parse_signature_line(line, number)
        verifier = known.get((name, kid))
        if verifier is None:
            continue  # unknown key: ignored, as the spec requires (e.g. a witness we don't use)
        if not verifier.verify(message, signature):
            raise VerificationError(f"signature by known key {name!r} does not verify")
        if name not in verified:
            verified.append(name)
    if not verified:
        raise VerificationError("note has no valid signature from a known key")
    return OpenedNote(body, tuple(verified))

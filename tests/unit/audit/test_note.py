"""Signed notes and checkpoints: round trips, strict parsing, and fuzzing that finds no crash.

Whatever bytes arrive, opening a note or parsing a checkpoint either succeeds as specified or
raises VerificationError; any other exception would be a crash in the offline verifier.
"""

from __future__ import annotations

import base64
import contextlib
import random

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit import (
    SIG_TYPE_COSIGNATURE_V1,
    Checkpoint,
    Signer,
    VerificationError,
    Verifier,
    leaf_hash,
    open_checkpoint,
    open_note,
    sign_checkpoint,
    sign_note,
)
from broker.audit.note import is_valid_key_name

LOG = Signer.from_skey(Signer.generate("example.com/log").to_skey())
OTHER = Signer.generate("example.com/other")
CHECKPOINT = Checkpoint("example.com/log", 42, leaf_hash(b"root"), ("ext one",))
SIGNED = sign_checkpoint(CHECKPOINT, LOG)


def test_checkpoint_round_trip_and_open() -> None:
    assert Checkpoint.from_text(CHECKPOINT.to_text()) == CHECKPOINT
    opened, names = open_checkpoint(SIGNED, [LOG.verifier()], origin="example.com/log")
    assert (opened, names) == (CHECKPOINT, ("example.com/log",))
    with pytest.raises(VerificationError, match=r"not 'example\.com/x'"):
        open_checkpoint(SIGNED, [LOG.verifier()], origin="example.com/x")
    with pytest.raises(VerificationError, match="no valid signature"):
        open_checkpoint(SIGNED, [OTHER.verifier()])


def test_key_strings_round_trip_and_hide_secrets() -> None:
    assert Verifier.from_vkey(LOG.verifier().to_vkey()) == LOG.verifier()
    assert Signer.from_skey(LOG.to_skey()).verifier() == LOG.verifier()
    assert "PRIVATE" not in repr(LOG)


@pytest.mark.parametrize(
    "vkey",
    [
        "",
        "name",
        "name+1234abcd",
        "na me+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T",
        "PeterNeumann+c74f20a3+ApQc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW\n",
    ],
    ids=[
        "empty",
        "no-id",
        "no-key",
        "space-in-name",
        "wrong-id",
        "uppercase-id",
        "truncated",
        "unknown-type",
        "newline",
    ],
)
def test_malformed_vkeys(vkey: str) -> None:
    with pytest.raises(VerificationError):
        Verifier.from_vkey(vkey)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "origin\n",
        "origin\n42\n",
        "origin\n42\n" + base64.b64encode(bytes(32)).decode(),
        "origin\n042\n{root}\n",
        "origin\n+42\n{root}\n",
        "origin\n 42\n{root}\n",
        "origin\n-1\n{root}\n",
        "origin\n18446744073709551616\n{root}\n",
        "origin\n\u0664\u0662\n{root}\n",
        "\n42\n{root}\n",
        "origin\n42\n{root}\n\n",
        "origin\n42\n{root}\next\n\n",
        "origin\r\n42\n{root}\n",
        "origin\n42\n" + base64.b64encode(bytes(31)).decode() + "\n",
        "origin\n42\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=\n",
        "origin\n42\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",
    ],
)
def test_malformed_checkpoints(text: str) -> None:
    with pytest.raises(VerificationError):
        Checkpoint.from_text(text.replace("{root}", base64.b64encode(bytes(32)).decode()))


def test_checkpoint_constructor_refuses_bad_fields() -> None:
    with pytest.raises(ValueError, match="origin"):
        Checkpoint("", 1, bytes(32))
    with pytest.raises(ValueError, match="32 bytes"):
        Checkpoint("o", 1, bytes(31))
    with pytest.raises(ValueError, match="outside"):
        Checkpoint("o", -1, bytes(32))
    with pytest.raises(ValueError, match="extension"):
        Checkpoint("o", 1, bytes(32), ("a\nb",))
    assert Checkpoint.from_text("o\n0\n" + base64.b64encode(bytes(32)).decode() + "\n").size == 0


def _sig_line(name: str, payload: bytes) -> str:
    return f"\u2014 {name} {base64.b64encode(payload).decode()}\n"


def test_note_rules_unknown_ignored_known_bad_rejects() -> None:
    body = "hello\n"
    good = sign_note(body, LOG, OTHER)
    assert open_note(good, [LOG.verifier()]) == (body, (LOG.name,))
    assert open_note(good, [OTHER.verifier(), LOG.verifier()]).verified == (LOG.name, OTHER.name)
    kid = LOG.key_id.to_bytes(4, "big")
    same_id_other_name = good + _sig_line("impostor", kid + bytes(64))
    assert open_note(same_id_other_name, [LOG.verifier()]).verified == (LOG.name,)
    same_name_other_id = good + _sig_line(LOG.name, bytes(4) + bytes(64))
    assert open_note(same_name_other_id, [LOG.verifier()]).verified == (LOG.name,)
    bad_known = good + _sig_line(LOG.name, kid + bytes(64))
    with pytest.raises(VerificationError, match="does not verify"):
        open_note(bad_known, [LOG.verifier()])
    twin = Verifier(LOG.name, LOG.key_id, 1, OTHER.verifier().public_key)
    with pytest.raises(VerificationError, match="share key ID"):
        open_note(good, [LOG.verifier(), twin])


@pytest.mark.parametrize(
    "note",
    [
        "hello\n",
        "hello\n\n",
        "hello\n\n\u2014 example.com/log\n",
        "hello\n\n\u2014 example.com/log \n",
        "hello\n\n- example.com/log AAAAAAA=\n",
        "hello\n\n\u2014 example.com/log AAAA\n",
        "hello\n\n\u2014 a+b " + "A" * 88 + "\n",
        "hel\tlo\n\n{sig}",
        "hello\r\n\n{sig}",
        "hello\n\n{sig}\n",
        "hello\n\n{sig}" + _sig_line("x", bytes(68)) * 100,
        "hello\n\n{sig}{strip}",
        "hello \ud800\n\n{sig}",
    ],
    ids=[
        "no-signatures",
        "blank-only",
        "no-signature-field",
        "empty-signature",
        "hyphen-not-em-dash",
        "short-signature",
        "plus-in-name",
        "tab",
        "carriage-return",
        "trailing-blank-line",
        "too-many-signatures",
        "no-final-newline",
        "lone-surrogate",
    ],
)
def test_malformed_notes(note: str) -> None:
    signature_line = sign_note("hello\n", LOG).split("\n\n", 1)[1]
    text = note.replace("{sig}", signature_line)
    if text.endswith("{strip}"):
        text = text.removesuffix("{strip}").rstrip("\n")
    with pytest.raises(VerificationError):
        open_note(text, [LOG.verifier()])


def test_note_bytes_must_be_utf8_and_bounded() -> None:
    with pytest.raises(VerificationError, match="UTF-8"):
        open_note(b"\xff\xfe\n\n" + SIGNED.encode().split(b"\n\n")[1], [LOG.verifier()])
    with pytest.raises(VerificationError, match="too large"):
        open_note(b"a" * (1 << 21), [LOG.verifier()])
    with pytest.raises(VerificationError, match="text"):
        open_note(12, [LOG.verifier()])  # type: ignore[arg-type]


def _cosign(key: Ed25519PrivateKey, name: str, body: str, timestamp: int) -> str:
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    verifier = Verifier.from_public_key(name, public, SIG_TYPE_COSIGNATURE_V1)
    stamp = timestamp.to_bytes(8, "big")
    message = b"cosignature/v1\ntime %d\n" % timestamp + body.encode()
    kid = verifier.key_id.to_bytes(4, "big")
    return _sig_line(name, kid + stamp + key.sign(message))


def test_cosignature_v1_round_trip() -> None:
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    witness = Verifier.from_public_key("witness.example", public, SIG_TYPE_COSIGNATURE_V1)
    body = CHECKPOINT.to_text()
    note = SIGNED + _cosign(key, "witness.example", body, 1_700_000_000)
    assert open_checkpoint(note, [LOG.verifier(), witness])[1] == (LOG.name, "witness.example")
    # The same key as a plain Ed25519 verifier has another key ID, so the line is ignored.
    plain = Verifier.from_public_key("witness.example", public)
    assert open_note(note, [LOG.verifier(), plain]).verified == (LOG.name,)
    too_late = SIGNED + _cosign(key, "witness.example", body, 1 << 63)
    with pytest.raises(VerificationError):
        open_note(too_late, [LOG.verifier(), witness])


def test_fuzz_random_texts_never_crash() -> None:
    """Random bytes and random line soups (bounded count): only VerificationError escapes."""
    rng = random.Random(2014)
    verifiers = [LOG.verifier(), OTHER.verifier()]
    alphabet = ["\n", "\n\n", "\u2014 ", " ", "+", "=", "0", "42", "A", "example.com/log"]
    for _ in range(2000):
        blob = rng.randbytes(rng.randrange(200))
        soup = "".join(rng.choice(alphabet) for _ in range(rng.randrange(40)))
        for text in (
            blob,
            blob.decode("utf-8", "replace"),
            soup,
            SIGNED[: rng.randrange(len(SIGNED))],
        ):
            with pytest.raises(VerificationError):
                open_note(text, verifiers)
        for text in (soup, blob.decode("latin-1")):
            with contextlib.suppress(VerificationError):
                Checkpoint.from_text(text)


def test_fuzz_single_character_edits_of_a_signed_checkpoint() -> None:
    """Every edit of one character (replace, delete, duplicate) is refused."""
    rng = random.Random(9162)
    verifiers = [LOG.verifier()]
    for position in range(len(SIGNED)):
        replacement = rng.choice("\n\u2014 +/=aZ09\x00\u00e9")
        edits = [
            SIGNED[:position] + replacement + SIGNED[position + 1 :],
            SIGNED[:position] + SIGNED[position + 1 :],
            SIGNED[:position] + SIGNED[position] + SIGNED[position:],
        ]
        for edited in edits:
            if edited == SIGNED:
                continue
            with pytest.raises(VerificationError):
                open_checkpoint(edited, verifiers)


@pytest.mark.parametrize("prefix", ["", "PRIVATE+KEY+"])
def test_key_names_that_are_not_utf8_are_refused(prefix: str) -> None:
    # Found by the audit_note fuzz harness: a key read from a non-UTF-8 command line or file
    # (surrogate-escaped) made key_id's encode() raise UnicodeEncodeError instead of refusing.
    signer = Signer.generate("PeterNeumann")
    text = signer.to_skey() if prefix else signer.verifier().to_vkey()
    bad = text.replace("PeterNeumann", "Pete\udcff\udcffrNeumann")
    with pytest.raises(VerificationError, match="invalid key name"):
        (Signer.from_skey if prefix else Verifier.from_vkey)(bad)
    assert not is_valid_key_name("Pete\udcffr")
    with pytest.raises(ValueError, match="invalid key name"):
        Signer("Pete\udcffr", Ed25519PrivateKey.generate())

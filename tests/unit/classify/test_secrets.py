"""Secret detectors: key blocks, JWTs, cloud keys and API tokens (all values are fake)."""

from __future__ import annotations

import base64
import json

import pytest

from .test_detectors import found, nothing, only

BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\nabcdefghijklmnopqrstuvwxyz012345"


def b64url(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize("kind", ["", "RSA ", "EC ", "OPENSSH ", "ENCRYPTED "])
def test_private_key_block(kind: str) -> None:
    block = f"-----BEGIN {kind}PRIVATE KEY-----\n{BODY}\n-----END {kind}PRIVATE KEY-----"
    only("secret.private_key", block, "key:\n{}\nthanks")


def test_private_key_without_end_line_covers_its_body_only() -> None:
    text = f"x -----BEGIN RSA PRIVATE KEY-----\n{BODY}\nand then prose"
    assert found(text) == [("secret.private_key", text[2 : text.index("\nand")])]


def test_private_key_in_a_doubly_escaped_string() -> None:
    text = "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEF\\nAASCBKcwggSjAgEAAoIB"
    assert found(text) == [("secret.private_key", text)]


@pytest.mark.parametrize("kind", ["PUBLIC KEY", "CERTIFICATE"])
def test_public_material_is_not_a_secret(kind: str) -> None:
    nothing(f"-----BEGIN {kind}-----\n{BODY}\n-----END {kind}-----")


def test_jwt() -> None:
    token = f"{b64url({'alg': 'HS256', 'typ': 'JWT'})}.{b64url({'sub': '1'})}.c2lnbmF0dXJl"
    only("secret.jwt", token, "Authorization: Bearer {}")
    unsigned = f"{b64url({'alg': 'none'})}.{b64url({'sub': '1'})}."
    only("secret.jwt", unsigned)


@pytest.mark.parametrize(
    "text",
    [
        f"{b64url({'typ': 'JWT'})}.{b64url({'sub': '1'})}.sig",  # no alg
        "eyJub3Rqc29u.eyJzdWIiOiIxIn0.sig",  # header is not JSON
        f"{b64url(['alg'])}.{b64url({'sub': '1'})}.sig",  # header not an object
        "file.tar.gz",
    ],
)
def test_jwt_negatives(text: str) -> None:
    nothing(text)


@pytest.mark.parametrize(
    ("label", "value"),
    [
        ("secret.cloud_key", "AKIAIOSFODNN7EXAMPLE"),
        ("secret.cloud_key", "ASIAY34FZKBOKMUTVV7A"),
        ("secret.cloud_key", "AIzaSyA1234567890abcdefghijklmnopqrstuv"),
        ("secret.api_token", "ghp_" + "a1B2" * 9),
        ("secret.api_token", "ghs_" + "Z9y8" * 9),
        ("secret.api_token", "github_pat_" + "A" * 22 + "_" + "b" * 59),
        ("secret.api_token", "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"),
        ("secret.api_token", "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc"),
        ("secret.api_token", "rk_live_" + "4eC39HqLyjWDarjtT1zdp7dc"),
    ],
)
def test_tokens(label: str, value: str) -> None:
    only(label, value)
    only(label, value, "token={}&x=1")
    only(label, value, '{{"key": "{}"}}')


@pytest.mark.parametrize(
    "text",
    [
        "AKIAIOSFODNN7EXAMPL",  # one short
        "AKIAIOSFODNN7EXAMPLEX",  # one long
        "ghp_short",
        "pk_live_4eC39HqLyjWDarjtT1zdp7dc",  # publishable: public by design
        "xoxb-",
        "AIzaSyA1234",
    ],
)
def test_token_negatives(text: str) -> None:
    nothing(text)

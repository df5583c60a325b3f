"""Fixtures the streaming harnesses share: the buyer's tokens and ciphertexts of one call.

``CallVault`` stands in for ``TokenVault`` at its one seam, ``resolve``: it knows two tokens of
tenant ``t``, call ``c`` (the broker's own vault answers the same for tokens it issued to that
call). ``open_ciphertext`` is the ``Opener`` of two ciphertexts the call issued.
"""

from __future__ import annotations

from collections.abc import Collection

TOKENS = {"TKN-0123456789ABCDEFGHJK": "Ada Lovelace", "TKN-ZYXWVTSRQPNMKJHGFEDC": "4 Main St"}
CIPHERTEXTS = {
    "enc:v1:k1:QUJDREVGR0hJSktMTU5PUFFSU1RVVldY": "alice@example.com",
    "enc:v1:k1:Zm9v": "foo",
}


class CallVault:
    """The tokens of tenant ``t``'s call ``c``; every other token stays unresolved."""

    def resolve(self, tenant: str, scope: str, tokens: Collection[str]) -> dict[str, str]:
        """The originals of the tokens this call issued, as ``TokenVault.resolve`` gives."""
        if (tenant, scope) != ("t", "c"):
            return {}
        return {token: TOKENS[token] for token in tokens if token in TOKENS}


def resolve_tokens(tokens: Collection[str]) -> dict[str, str]:
    """``Resolver`` of call ``c``."""
    return CallVault().resolve("t", "c", tokens)


def open_ciphertext(ciphertext: str) -> str | None:
    """``Opener`` of call ``c``: its two ciphertexts open, anything else does not."""
    return CIPHERTEXTS.get(ciphertext)

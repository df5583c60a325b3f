"""Give the buyer back its own values: resolve tokens and open ciphertexts in the answer.

Only tokens issued for this tenant in this call are restored (the vault checks both), and only
ciphertexts made under this tenant's key are opened; anything else (a token the model invented,
one from another call or tenant, a ciphertext from elsewhere) stays exactly as text. A token or
ciphertext that is a whole string value gets its original JSON value back (a number stays a
number); inside text it is replaced by the original's text.
"""

from __future__ import annotations

import re
from typing import Any, Final

from broker.enforce import transforms
from broker.enforce.keys import TenantKeys
from broker.enforce.vault import TOKEN_RE, SealedTokens, TokenVault
from broker.errors import InvalidArgument

CIPHERTEXT_RE: Final = re.compile(r"enc:v1:[0-9a-f]{16}:[A-Za-z0-9_-]+")


class Restorer:
    """Restores tokens and ciphertexts for the buyer that owns them."""

    def __init__(self, vault: TokenVault, keys: TenantKeys) -> None:
        self._vault = vault
        self._keys = keys

    def restore(
        self,
        answer: dict[str, Any],
        tenant: str,
        call_id: str,
        *,
        issued: SealedTokens | None = None,
    ) -> tuple[Any, int]:
        """Return the restored answer and how many values were restored.

        ``issued``: the call's own sealed tokens, to resolve from (see ``TokenVault.resolve``).
        """
        tokens = set()
        for text in _strings(answer):
            tokens.update(TOKEN_RE.findall(text))
        originals = (
            dict(self._vault.resolve(tenant, call_id, tokens, issued=issued)) if tokens else {}
        )
        key = self._keys.key(tenant, "encrypt")
        restored = 0

        def original_of(match: str) -> tuple[bool, Any]:
            if match in originals:
                return True, originals[match]
            if match.startswith(transforms.ENCRYPTED_PREFIX):
                try:
                    return True, transforms.decrypt_value(key, self._keys.key_id, tenant, match)
                except InvalidArgument:
                    return False, None
            return False, None

        def fix(value: Any) -> Any:
            nonlocal restored
            if isinstance(value, dict):
                return {k: fix(v) for k, v in value.items()}
            if isinstance(value, list):
                return [fix(v) for v in value]
            if not isinstance(value, str) or ("TKN-" not in value and "enc:v1:" not in value):
                return value
            whole = TOKEN_RE.fullmatch(value) or CIPHERTEXT_RE.fullmatch(value)
            if whole:
                found, original = original_of(value)
                if found:
                    restored += 1
                    return original
                return value

            def substitute(match: re.Match[str]) -> str:
                nonlocal restored
                found, original = original_of(match.group(0))
                if not found:
                    return match.group(0)
                restored += 1
                return transforms.value_text(original)

            return _ANY_RE.sub(substitute, value)

        return fix(answer), restored


_ANY_RE: Final = re.compile(f"{TOKEN_RE.pattern}|{CIPHERTEXT_RE.pattern}")


def _strings(value: Any, marker: str = "TKN-") -> list[str]:
    """Every string inside a JSON value that contains ``marker`` (a cheap pre-filter)."""
    out: list[str] = []
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str) and marker in node:
            out.append(node)
    return out


def ciphertexts_in(value: Any) -> set[str]:
    """Every ciphertext-shaped text (``enc:v1:...``) inside the strings of a JSON value.

    InvokeStream opens only the ciphertexts its own enforcement issued: those in the payload it
    sent and not in the one the buyer sent (``broker.streaming.ciphertexts``).
    """
    return {
        found
        for text in _strings(value, transforms.ENCRYPTED_PREFIX)
        for found in CIPHERTEXT_RE.findall(text)
    }

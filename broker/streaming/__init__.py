"""The answer side of the policy for streamed answers, applied without buffering the answer.

``StreamingScanner`` applies entity actions to text whose entities may straddle chunks;
``StreamingRestorer`` restores the buyer's vault tokens even when a token is split across
chunks; ``CiphertextRestorer`` opens the ciphertexts this call's ``encrypt`` actions issued,
likewise; ``TextPipeline`` chains them. All are pure and deterministic: the same text gives the
same output however it is split (see ``README.md`` beside this file for how much is held back).
"""

from broker.streaming.ciphertexts import (
    CiphertextRestorer,
    Opener,
    ciphertext_opener,
    open_ciphertexts,
)
from broker.streaming.pipeline import TextPipeline, TextStage, run_stream
from broker.streaming.restore import (
    MAX_TOKEN_HOLD,
    Resolver,
    StreamingRestorer,
    restore_text,
    vault_resolver,
)
from broker.streaming.scan import (
    DEFAULT_MAX_ENTITY_CHARS,
    LOOKAHEAD_CHARS,
    EntityAction,
    StreamingScanner,
    scan_text,
)

__all__ = [
    "DEFAULT_MAX_ENTITY_CHARS",
    "LOOKAHEAD_CHARS",
    "MAX_TOKEN_HOLD",
    "CiphertextRestorer",
    "EntityAction",
    "Opener",
    "Resolver",
    "StreamingRestorer",
    "StreamingScanner",
    "TextPipeline",
    "TextStage",
    "ciphertext_opener",
    "open_ciphertexts",
    "restore_text",
    "run_stream",
    "scan_text",
    "vault_resolver",
]

"""Tamper-evident audit log.

The pure cryptographic core lives in three modules, re-exported here:

- :mod:`broker.audit.merkle`: RFC 6962 / RFC 9162 hashing, proof generation over a
  perfect-subtree reader, proof verification, and an in-memory :class:`MerkleTree`.
- :mod:`broker.audit.note`: C2SP signed notes with Ed25519 keys and cosignature/v1 witnesses.
- :mod:`broker.audit.checkpoint`: C2SP tlog-checkpoint bodies inside signed notes.

Every failure on untrusted input is a :class:`VerificationError`.
"""

from broker.audit.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from broker.audit.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    MerkleTree,
    SubtreeHashReader,
    VerificationError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    subtree_hash,
    verify_consistency,
    verify_inclusion,
)
from broker.audit.note import (
    SIG_TYPE_COSIGNATURE_V1,
    SIG_TYPE_ED25519,
    OpenedNote,
    Signer,
    Verifier,
    key_id,
    open_note,
    sign_note,
)

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "SIG_TYPE_COSIGNATURE_V1",
    "SIG_TYPE_ED25519",
    "Checkpoint",
    "MerkleTree",
    "OpenedNote",
    "Signer",
    "SubtreeHashReader",
    "VerificationError",
    "Verifier",
    "consistency_proof",
    "inclusion_proof",
    "key_id",
    "leaf_hash",
    "node_hash",
    "open_checkpoint",
    "open_note",
    "root_from_leaf_hashes",
    "sign_checkpoint",
    "sign_note",
    "subtree_hash",
    "verify_consistency",
    "verify_inclusion",
]

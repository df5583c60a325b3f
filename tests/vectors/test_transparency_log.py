"""Every vector in ``shared/vectors/transparency-log/`` against the audit crypto core.

The vectors come from transparency-dev/merkle, golang/mod and C2SP (see their README). They are
data, read here and nowhere else; a missing or truncated vector directory fails in CI.
"""

from __future__ import annotations

import base64
import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from broker.audit import (
    EMPTY_ROOT,
    Checkpoint,
    MerkleTree,
    Signer,
    VerificationError,
    Verifier,
    leaf_hash,
    node_hash,
    open_note,
    root_from_leaf_hashes,
    sign_note,
    subtree_hash,
    verify_consistency,
    verify_inclusion,
)
from tests.conftest import skip_or_fail

Vector = dict[str, Any]

EXPECTED_COUNTS = {
    "merkle_inclusion_probes.json": 98,
    "merkle_consistency_probes.json": 98,
    "signed_note_vectors.json": 12,
}


def _find_vectors_dir() -> Path | None:
    """Search upward from this file for ``shared/vectors/transparency-log``."""
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "vectors" / "transparency-log"
        if candidate.is_dir():
            return candidate
    return None


VECTORS_DIR = _find_vectors_dir()


@cache
def _load(name: str) -> Any:
    if VECTORS_DIR is None:
        return None
    return json.loads((VECTORS_DIR / name).read_text(encoding="utf-8"))


def _vectors(name: str) -> list[Vector]:
    data = _load(name)
    return [] if data is None else list(data["vectors"])


def _reference() -> Vector:
    data = _load("rfc6962_reference_tree.json")
    return {} if data is None else dict(data)


def _probe_id(v: Vector) -> str:
    return str(v["file"]).removeprefix("testdata/").removesuffix(".json")


def _require_vectors() -> None:
    if VECTORS_DIR is None:
        skip_or_fail("shared/vectors/transparency-log not found above " + str(Path(__file__)))


def test_vector_files_are_all_present() -> None:
    """A missing or shortened vector file must not pass silently as fewer tests."""
    _require_vectors()
    assert VECTORS_DIR is not None
    for name, count in EXPECTED_COUNTS.items():
        assert len(_vectors(name)) == count, name
    assert _reference()["leaf_inputs_hex"]


def _hex(value: str) -> bytes:
    return bytes.fromhex(value)


# --- transparency-dev/merkle testdata probes -------------------------------------------------


@pytest.mark.parametrize("v", _vectors("merkle_inclusion_probes.json"), ids=_probe_id)
def test_inclusion_probe(v: Vector) -> None:
    """Happy paths verify; every mutation (index, size, proof, root, leaf) is refused."""
    args = (
        _hex(v["leaf_hash"]),
        v["leaf_index"],
        v["tree_size"],
        [_hex(p) for p in v["proof"]],
        _hex(v["root"]),
    )
    if v["want_error"]:
        with pytest.raises(VerificationError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("v", _vectors("merkle_consistency_probes.json"), ids=_probe_id)
def test_consistency_probe(v: Vector) -> None:
    """Happy paths verify; every mutation (sizes, proof, roots) is refused."""
    args = (
        v["size1"],
        v["size2"],
        [_hex(p) for p in v["proof"]],
        _hex(v["root1"]),
        _hex(v["root2"]),
    )
    if v["want_error"]:
        with pytest.raises(VerificationError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


# --- the classic 8-leaf RFC 6962 reference tree ----------------------------------------------


@pytest.fixture(scope="module")
def reference() -> Vector:
    _require_vectors()
    return _reference()


@pytest.fixture(scope="module")
def reference_tree(reference: Vector) -> MerkleTree:
    return MerkleTree(leaf_hash(_hex(x)) for x in reference["leaf_inputs_hex"])


def test_reference_every_node_hash(reference: Vector, reference_tree: MerkleTree) -> None:
    """Each stored perfect-subtree hash, by (level, index), equals the published node hash."""
    for level, hashes in enumerate(reference["node_hashes_by_level"]):
        for index, want in enumerate(hashes):
            start = index << level
            got = reference_tree.get_subtree_hash(start, start + (1 << level))
            assert got.hex() == want, (level, index)


@pytest.mark.parametrize("size", range(9))
def test_reference_root(reference: Vector, reference_tree: MerkleTree, size: int) -> None:
    """Roots for sizes 0..8, from stored nodes and from the MTH definition alike."""
    want = reference["root_by_tree_size"][str(size)]
    leaves = [leaf_hash(_hex(x)) for x in reference["leaf_inputs_hex"][:size]]
    assert reference_tree.root(size).hex() == want
    assert root_from_leaf_hashes(leaves).hex() == want


@pytest.mark.parametrize("case", range(5), ids=lambda i: f"inclusion-{i}")
def test_reference_inclusion_proof(
    reference: Vector, reference_tree: MerkleTree, case: int
) -> None:
    """Generated proofs equal the published ones byte for byte, and verify."""
    v = reference["inclusion_proofs"][case]
    index, size = v["leaf_index"], v["tree_size"]
    proof = reference_tree.inclusion_proof(index, size)
    assert [p.hex() for p in proof] == v["proof"]
    leaf = reference_tree.get_subtree_hash(index, index + 1)
    verify_inclusion(leaf, index, size, proof, reference_tree.root(size))


@pytest.mark.parametrize("case", range(5), ids=lambda i: f"consistency-{i}")
def test_reference_consistency_proof(
    reference: Vector, reference_tree: MerkleTree, case: int
) -> None:
    """Generated proofs equal the published ones byte for byte, and verify."""
    v = reference["consistency_proofs"][case]
    size1, size2 = v["size1"], v["size2"]
    proof = reference_tree.consistency_proof(size1, size2)
    assert [p.hex() for p in proof] == v["proof"]
    verify_consistency(size1, size2, proof, reference_tree.root(size1), reference_tree.root(size2))


def test_hasher_vectors(reference: Vector) -> None:
    """RFC 6962 hasher unit vectors: empty root, leaf hashes, node hash."""
    vectors = reference["hasher_vectors"]
    assert EMPTY_ROOT.hex() == vectors["empty_root"]
    assert root_from_leaf_hashes([]).hex() == vectors["empty_root"]
    for v in vectors["leaf_hash"]:
        assert leaf_hash(_hex(v["input_hex"])).hex() == v["want"]
    for v in vectors["node_hash"]:
        assert node_hash(_hex(v["left_hex"]), _hex(v["right_hex"])).hex() == v["want"]


def test_mtc_subtree_hash_rolling_vector(reference: Vector) -> None:
    """Merkle Tree Certificates draft: every valid subtree of 130 leaves, hashed in a roll.

    Subtree hashes come from the stored-node reader path (:func:`subtree_hash`), and each is
    also checked against the MTH definition, so both agree with the draft.
    """
    v = reference["mtc_subtree_hash_rolling_vector"]
    leaves = [leaf_hash(bytes([i])) for i in range(130)]
    tree = MerkleTree(leaves)
    rolling = hashlib.sha256()
    for end in range(131):
        for start in range(end + 1):
            width = end - start
            if start != 0 and start != end and start % (1 << (width - 1).bit_length()):
                continue
            got = subtree_hash(tree.get_subtree_hash, start, end)
            assert got == root_from_leaf_hashes(leaves[start:end]), (start, end)
            rolling.update(f"[{start}, {end}) {got.hex()}\n".encode())
    assert rolling.hexdigest() == v["want_sha256"]


# --- C2SP signed notes and tlog checkpoints --------------------------------------------------


@pytest.mark.parametrize("v", _vectors("signed_note_vectors.json"), ids=lambda v: str(v["name"]))
def test_signed_note_vector(v: Vector) -> None:
    """Open (or sign, or format) each note exactly as the vector says, positive and negative."""
    if "skey" in v:
        signer = Signer.from_skey(v["skey"])
        assert signer.to_skey() == v["skey"]
        signed = sign_note(v["text"], signer)
        assert signed == v["want_signed_note"]
        assert open_note(signed, [signer.verifier()]).verified == (signer.name,)
        return
    if "record_hash_input" in v:
        root = leaf_hash(v["record_hash_input"].encode())
        checkpoint = Checkpoint("go.sum database tree", v["tree_size"], root)
        assert checkpoint.to_text() == v["want_text"]
        assert Checkpoint.from_text(v["want_text"]) == checkpoint
        return
    verifiers = [Verifier.from_vkey(k) for k in v["vkeys"]]
    assert [x.to_vkey() for x in verifiers] == v["vkeys"]
    if v["want_error"]:
        with pytest.raises(VerificationError):
            open_note(v["note"], verifiers)
        return
    body, verified = open_note(v["note"], verifiers)
    assert list(verified) == v["want_verified"]
    assert open_note(v["note"].encode(), verifiers) == (body, verified)
    if v.get("checkpoint"):
        checkpoint = Checkpoint.from_text(body)
        assert checkpoint.origin == v["origin"]
        assert checkpoint.size == v["want_size"]
        assert checkpoint.root_hash.hex() == v["want_root"]
        assert checkpoint.to_text() == body
    if "cosig_timestamp" in v:
        line = next(x for x in v["note"].splitlines() if x.startswith("\u2014 Known "))
        raw = base64.b64decode(line.split(" ")[2])
        assert int.from_bytes(raw[4:12], "big") == v["cosig_timestamp"]

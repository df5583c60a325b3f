"""Properties of the Merkle core: proofs match the RFC definitions, verify, and break when touched.

Generated proofs are compared with a direct, recursive transcription of RFC 9162 sections
2.1.3.1 and 2.1.4.1 over the leaf list, so the generator and the verifier are each checked
against something independent of the other.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator

import pytest

from broker.audit.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    VerificationError,
    consistency_plan,
    consistency_proof,
    fold,
    inclusion_plan,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    subtree_hash,
    verify_consistency,
    verify_inclusion,
)

LEAVES = [leaf_hash(i.to_bytes(4, "big")) for i in range(70)]
TREE = MerkleTree(LEAVES)


def _k(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def _rfc_path(m: int, d: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) exactly as RFC 9162 section 2.1.3.1 writes it."""
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*_rfc_path(m, d[:k]), root_from_leaf_hashes(d[k:])]
    return [*_rfc_path(m - k, d[k:]), root_from_leaf_hashes(d[:k])]


def _rfc_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) exactly as RFC 9162 section 2.1.4.1 writes it."""
    if m == len(d):
        return [] if b else [root_from_leaf_hashes(d)]
    k = _k(len(d))
    if m <= k:
        return [*_rfc_subproof(m, d[:k], b), root_from_leaf_hashes(d[k:])]
    return [*_rfc_subproof(m - k, d[k:], False), root_from_leaf_hashes(d[:k])]


def _flip(value: bytes, bit: int) -> bytes:
    out = bytearray(value)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _spread_bits() -> range | list[int]:
    """One bit in every byte, cycling through all 8 bit positions: 32 flips per hash."""
    return [8 * j + j % 8 for j in range(32)]


def _mutations(values: list[bytes], bits: range | list[int]) -> Iterator[list[bytes]]:
    for i, value in enumerate(values):
        for bit in bits:
            yield [*values[:i], _flip(value, bit), *values[i + 1 :]]


@pytest.mark.parametrize("size", range(1, 71))
def test_inclusion_every_index(size: int) -> None:
    """For each leaf: the proof is the RFC's PATH, verifies, and every bit flip or shift fails."""
    root = TREE.root(size)
    assert root == root_from_leaf_hashes(LEAVES[:size])
    for index in range(size):
        proof = TREE.inclusion_proof(index, size)
        assert proof == _rfc_path(index, LEAVES[:size])
        verify_inclusion(LEAVES[index], index, size, proof, root)
        for leaf, *path, bad_root in _mutations([LEAVES[index], *proof, root], _spread_bits()):
            with pytest.raises(VerificationError):
                verify_inclusion(leaf, index, size, path, bad_root)
        # Only the index is mutated: an RFC 6962 root does not commit to the tree size, so a
        # proof can also fit a larger size of the same shape (the root would then differ).
        for bad_index in [index - 1, index + 1]:
            if 0 <= bad_index < size:
                with pytest.raises(VerificationError):
                    verify_inclusion(LEAVES[index], bad_index, size, proof, root)
        for bad_proof in [proof[:-1], [*proof, root], [root, *proof]]:
            if bad_proof != proof:
                with pytest.raises(VerificationError):
                    verify_inclusion(LEAVES[index], index, size, bad_proof, root)


@pytest.mark.parametrize("size", range(1, 17))
def test_inclusion_all_256_bits_small_trees(size: int) -> None:
    """Exhaustive variant: every one of the 256 bits of every input hash, trees up to 16."""
    root = TREE.root(size)
    for index in range(size):
        proof = TREE.inclusion_proof(index, size)
        for leaf, *path, bad_root in _mutations([LEAVES[index], *proof, root], range(256)):
            with pytest.raises(VerificationError):
                verify_inclusion(leaf, index, size, path, bad_root)


@pytest.mark.parametrize("size2", range(1, 41))
def test_consistency_all_pairs(size2: int) -> None:
    """For each earlier size: the proof is the RFC's PROOF, verifies, and every flip fails."""
    root2 = TREE.root(size2)
    for size1 in range(1, size2 + 1):
        root1 = TREE.root(size1)
        proof = TREE.consistency_proof(size1, size2)
        assert proof == _rfc_subproof(size1, LEAVES[:size2], True)
        verify_consistency(size1, size2, proof, root1, root2)
        if size1 == size2:
            continue
        for bad_root1, *path, bad_root2 in _mutations([root1, *proof, root2], _spread_bits()):
            with pytest.raises(VerificationError):
                verify_consistency(size1, size2, path, bad_root1, bad_root2)
        for bad1, bad2 in [(size1 - 1, size2), (size1 + 1, size2), (size1, size2 + 1)]:
            if 0 < bad1 < bad2 and TREE.root(bad1) != root1:
                with pytest.raises(VerificationError):
                    verify_consistency(bad1, bad2, proof, root1, root2)
        with pytest.raises(VerificationError):
            verify_consistency(size1, size2, proof, root2, root1)
        with pytest.raises(VerificationError):
            verify_consistency(size1, size2, proof[:-1], root1, root2)


def _counting(reader: Callable[[int, int], bytes], log: list[int]) -> Callable[[int, int], bytes]:
    def read(start: int, end: int) -> bytes:
        log.append(start)
        return reader(start, end)

    return read


@pytest.mark.slow
def test_million_leaves_prove_with_logarithmic_reads() -> None:
    """A million-leaf log answers proofs through O(log n) perfect-subtree reads."""
    n = 1_000_000
    leaves = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(n)]
    tree = MerkleTree(leaves)
    assert tree.size == n
    root = tree.root()
    assert root == root_from_leaf_hashes(leaves)
    budget = 2 * n.bit_length() + 2
    rng = random.Random(4)
    for index in [0, 1, n // 2, n - 2, n - 1, *rng.sample(range(n), 20)]:
        reads: list[int] = []
        proof = inclusion_proof(_counting(tree.get_subtree_hash, reads), index, n)
        assert len(reads) <= budget
        verify_inclusion(leaves[index], index, n, proof, root)
    for size1 in [1, 2, 3, 524_288, 999_999, *rng.sample(range(1, n), 20)]:
        reads = []
        proof = consistency_proof(_counting(tree.get_subtree_hash, reads), size1, n)
        assert len(reads) <= budget
        verify_consistency(size1, n, proof, tree.root(size1), root)


def test_plans_name_only_perfect_subtrees_that_the_generators_read() -> None:
    """A store fetches exactly the nodes of a plan, so the plan must match the reads."""
    for size in range(1, len(LEAVES) + 1):
        plans = [inclusion_plan(i, size) for i in range(size)]
        plans += [consistency_plan(s1, size) for s1 in range(1, size + 1)]
        for plan in plans:
            for chunks in plan:
                for start, end in chunks:
                    TREE.get_subtree_hash(start, end)  # raises unless perfect and aligned
        for index in range(size):
            reads: list[int] = []
            inclusion_proof(_counting(TREE.get_subtree_hash, reads), index, size)
            assert len(reads) == sum(map(len, inclusion_plan(index, size)))
    assert fold([]) == EMPTY_ROOT
    assert fold([LEAVES[0]]) == LEAVES[0]
    assert fold(LEAVES[:3]) == node_hash(LEAVES[0], node_hash(LEAVES[1], LEAVES[2]))


def test_subtree_hash_rejects_unaligned_ranges() -> None:
    assert subtree_hash(TREE.get_subtree_hash, 5, 5) == EMPTY_ROOT
    for start, end in [(1, 3), (2, 5), (6, 2), (-1, 0)]:
        with pytest.raises(ValueError, match="range"):
            subtree_hash(TREE.get_subtree_hash, start, end)


def test_generators_refuse_impossible_requests() -> None:
    for index, size in [(0, 0), (5, 5), (-1, 3)]:
        with pytest.raises(ValueError, match="not in a tree"):
            TREE.inclusion_proof(index, size)
    for size1, size2 in [(0, 5), (6, 5), (-1, 2)]:
        with pytest.raises(ValueError, match="no consistency proof"):
            TREE.consistency_proof(size1, size2)
    with pytest.raises(ValueError, match="not 71"):
        TREE.inclusion_proof(0, 71)
    with pytest.raises(ValueError, match="not a complete perfect subtree"):
        TREE.get_subtree_hash(64, 128)
    with pytest.raises(ValueError, match="expected 32"):
        MerkleTree().append(b"short")


def test_tree_root_and_prefix_roots() -> None:
    assert MerkleTree().root() == EMPTY_ROOT
    assert TREE.root(3) == node_hash(node_hash(LEAVES[0], LEAVES[1]), LEAVES[2])
    assert MerkleTree(LEAVES[:3]).append(LEAVES[3]) == 3


GOOD = LEAVES[0]
JUNK: list[object] = [None, "ab" * 16, 1.5, [], b"", GOOD + b"\x00", object()]
SIZES: list[object] = [None, -1, 1 << 64, True, 1.0, "3"]


def test_verifiers_raise_only_verification_error_on_junk() -> None:
    """Malformed arguments of every kind become VerificationError, never another exception."""
    proof = TREE.inclusion_proof(2, 5)
    root = TREE.root(5)
    calls: list[Callable[[], None]] = []
    for junk in JUNK:
        calls.append(lambda j=junk: verify_inclusion(j, 2, 5, proof, root))  # type: ignore[misc]
        calls.append(lambda j=junk: verify_inclusion(LEAVES[2], 2, 5, proof, j))  # type: ignore[misc]
        calls.append(lambda j=junk: verify_inclusion(LEAVES[2], 2, 5, [j], root))  # type: ignore[misc]
        calls.append(lambda j=junk: verify_inclusion(LEAVES[2], 2, 5, j, root))  # type: ignore[misc]
        calls.append(lambda j=junk: verify_consistency(2, 5, [j], root, root))  # type: ignore[misc]
        calls.append(lambda j=junk: verify_consistency(2, 5, proof, j, root))  # type: ignore[misc]
        calls.append(lambda j=junk: verify_consistency(2, 5, proof, root, j))  # type: ignore[misc]
        calls.append(lambda j=junk: verify_consistency(3, 3, [], j, root))  # type: ignore[misc]
    for bad in SIZES:
        calls.append(lambda s=bad: verify_inclusion(GOOD, s, 5, proof, root))  # type: ignore[misc]
        calls.append(lambda s=bad: verify_inclusion(GOOD, 0, s, proof, root))  # type: ignore[misc]
        calls.append(lambda s=bad: verify_consistency(s, 5, proof, root, root))  # type: ignore[misc]
        calls.append(lambda s=bad: verify_consistency(2, s, proof, root, root))  # type: ignore[misc]
    calls.append(lambda: verify_inclusion(GOOD, 0, 1 << 40, [GOOD] * 1000, root))
    calls.append(lambda: verify_consistency(1, 1 << 40, [GOOD] * 1000, root, root))
    for call in calls:
        with pytest.raises(VerificationError):
            call()


def test_verifiers_fuzzed_with_random_proofs() -> None:
    """Random sizes, indices and hashes (bounded count): always VerificationError, never valid."""
    rng = random.Random(6962)
    for _ in range(3000):
        size = rng.choice([0, 1, 2, 3, 7, 8, 9, rng.randrange(1 << 64)])
        other = rng.choice([0, 1, size, size + 1, rng.randrange(1 << 64)])
        path = [rng.randbytes(rng.choice([32, 32, 31, 33, 0])) for _ in range(rng.randrange(70))]
        a, b = rng.randbytes(32), rng.randbytes(32)
        with pytest.raises(VerificationError):
            verify_inclusion(a, other, size, path, b)
        with pytest.raises(VerificationError):
            verify_consistency(other, size, path, a, b)

"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs and their verification.

This module is the pure core of the audit log: no I/O, no clock, no database. Everything a store
or the offline verifier needs is here, and each piece cites the RFC 9162 section it implements
(RFC 9162 restates RFC 6962 section 2 with the same hashes, so both logs verify the same way).

Storage scheme assumed by the proof generators
-----------------------------------------------
A log stores the hash of every *complete perfect subtree*: the node at ``(level, index)`` is the
hash of leaves ``[index * 2**level, (index + 1) * 2**level)``. Level 0 holds the leaf hashes.
Such a node never changes once its last leaf is appended, so the rows are append-only, and
the same rows answer proofs and roots for every earlier tree size too. A tree of ``n`` leaves
holds fewer than ``2 n`` such rows.

The generators only ever ask a reader ``get_subtree_hash(start, end)`` for a perfect, aligned
range (``end - start`` a power of two, ``start`` a multiple of it), which a store answers with one
keyed read of ``(level, index) = (log2(end - start), start >> level)``. Any node of the RFC tree
is a right fold of at most ``log2(n) + 1`` such perfect chunks (see :func:`subtree_hash`), and an
inclusion or consistency proof has at most one node that is not perfect, so a proof costs
``O(log n)`` reads at any size.

The generators are also split into *plans* (:func:`inclusion_plan`, :func:`consistency_plan`):
per proof hash, the perfect subtrees it folds. A database store fetches all of a plan's nodes
in one query and folds them with :func:`prove`, the same code the in-memory tree runs.

Errors
------
Verifiers take untrusted input and raise only :class:`VerificationError`, whatever the input
(wrong types, wrong lengths, impossible sizes); they never return a false "valid". Generators
take trusted arguments from the log itself and raise :class:`ValueError` on misuse.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

HASH_SIZE = 32
"""Bytes in a SHA-256 digest: every leaf, node and root hash of this log."""

# RFC 9162 section 2.1.1: the one-byte domain separators that stop a leaf from being passed off
# as an interior node (second-preimage attack). They live here and nowhere else.
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}) = SHA-256() (RFC 9162 section 2.1.1): the root of the empty tree."""

_MAX_TREE_SIZE = (1 << 64) - 1  # tree sizes are uint64 on the wire (RFC 9162, tlog-checkpoint)
_MAX_PROOF_LEN = 2 * 64  # no valid proof in a uint64-sized tree is longer; bounds work on junk

SubtreeHashReader = Callable[[int, int], bytes]
"""``get_subtree_hash(start, end)``: hash of the perfect aligned subtree over ``[start, end)``."""


class VerificationError(Exception):
    """A proof, checkpoint, note or key failed verification or could not be parsed.

    The single error type of the audit crypto core, so callers catch one thing and a
    malformed input can never escape as an ``IndexError`` or be mistaken for success.
    """


def leaf_hash(data: bytes) -> bytes:
    """Hash one log entry: ``SHA-256(0x00 || data)`` (RFC 9162 section 2.1.1)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash two children: ``SHA-256(0x01 || left || right)`` (RFC 9162 section 2.1.1)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH over already-hashed leaves (RFC 9162 section 2.1.1), for tests and small trees.

    Pairs hashes level by level and carries an odd last node up unchanged, which builds exactly
    the RFC's left-heavy tree (split at the largest power of two below ``n``) without recursion.
    """
    if not hashes:
        return EMPTY_ROOT
    level = list(hashes)
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def _largest_power_of_two_below(n: int) -> int:
    """The ``k`` of RFC 9162 section 2.1.1: largest power of two strictly smaller than ``n > 1``."""
    return 1 << ((n - 1).bit_length() - 1)


Range = tuple[int, int]
"""``(start, end)``: the leaves ``[start, end)`` of one perfect aligned subtree."""

ProofPlan = list[list[Range]]
"""Per proof hash, the perfect subtrees whose right fold (:func:`fold`) gives that hash."""


def subtree_chunks(start: int, end: int) -> list[Range]:
    """The perfect aligned subtrees, left to right, whose right fold is MTH(D[start:end]).

    The range must start at a multiple of the smallest power of two ``>= end - start`` (every
    node of an RFC 6962 tree does, and so do the "subtrees" of the Merkle Tree Certificates
    draft). Its leaves then split into perfect aligned chunks of decreasing size (the binary
    digits of ``end - start``). An empty range has no chunks (its hash is :data:`EMPTY_ROOT`).
    """
    if not 0 <= start <= end:
        raise ValueError(f"invalid range [{start}, {end})")
    if start != end and start % (1 << (end - start - 1).bit_length()):
        raise ValueError(f"range [{start}, {end}) is not aligned as a Merkle subtree")
    chunks: list[Range] = []
    pos = start
    while pos < end:
        width = 1 << ((end - pos).bit_length() - 1)
        chunks.append((pos, pos + width))
        pos += width
    return chunks


def fold(hashes: Sequence[bytes]) -> bytes:
    """The right fold of perfect-subtree hashes (left to right) into one node hash.

    ``fold([a, b, c]) = node_hash(a, node_hash(b, c))``; the fold of nothing is the empty root.
    """
    if not hashes:
        return EMPTY_ROOT
    result = hashes[-1]
    for digest in reversed(hashes[:-1]):
        result = node_hash(digest, result)
    return result


def subtree_hash(get_subtree_hash: SubtreeHashReader, start: int, end: int) -> bytes:
    """MTH(D[start:end]) for a range aligned as an RFC tree node, from perfect-subtree reads.

    See :func:`subtree_chunks` for which ranges qualify and which reads it makes.
    """
    return fold([get_subtree_hash(lo, hi) for lo, hi in subtree_chunks(start, end)])


def inclusion_plan(index: int, size: int) -> ProofPlan:
    """Which subtrees PATH(index, D[size]) of RFC 9162 section 2.1.3.1 hashes, per proof hash.

    Walks down from the root: at each split the sibling subtree goes into the proof. The proof
    is leaf-level sibling first. Pure arithmetic on the sizes, so a store can learn every node
    a proof needs, fetch them together, and :func:`fold` each entry.
    """
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    plan: ProofPlan = []
    lo, hi = 0, size
    while hi - lo > 1:
        mid = lo + _largest_power_of_two_below(hi - lo)
        if index < mid:
            plan.append(subtree_chunks(mid, hi))
            hi = mid
        else:
            plan.append(subtree_chunks(lo, mid))
            lo = mid
    plan.reverse()
    return plan


def consistency_plan(size1: int, size2: int) -> ProofPlan:
    """Which subtrees PROOF(size1, D[size2]) of RFC 9162 section 2.1.4.1 hashes, per hash.

    ``SUBPROOF`` unrolled into a loop over absolute leaf ranges; ``whole`` is its flag ``b``
    (true while the old tree is still a prefix whose root the verifier already holds).
    A proof from the empty tree is meaningless and is refused, as the verifier refuses it.
    Lowest node first, as :func:`inclusion_plan`.
    """
    if not 0 < size1 <= size2:
        raise ValueError(f"no consistency proof from size {size1} to size {size2}")
    plan: ProofPlan = []
    lo, hi, whole = 0, size2, True
    while size1 != hi:
        mid = lo + _largest_power_of_two_below(hi - lo)
        if size1 <= mid:
            plan.append(subtree_chunks(mid, hi))
            hi = mid
        else:
            plan.append(subtree_chunks(lo, mid))
            lo, whole = mid, False
    if not whole:
        plan.append(subtree_chunks(lo, hi))
    plan.reverse()
    return plan


def prove(get_subtree_hash: SubtreeHashReader, plan: ProofPlan) -> list[bytes]:
    """The proof hashes of ``plan``, each the fold of the subtrees it names."""
    return [fold([get_subtree_hash(lo, hi) for lo, hi in chunks]) for chunks in plan]


def inclusion_proof(get_subtree_hash: SubtreeHashReader, index: int, size: int) -> list[bytes]:
    """PATH(index, D[size]) of RFC 9162 section 2.1.3.1, leaf-level sibling first."""
    return prove(get_subtree_hash, inclusion_plan(index, size))


def consistency_proof(get_subtree_hash: SubtreeHashReader, size1: int, size2: int) -> list[bytes]:
    """PROOF(size1, D[size2]) of RFC 9162 section 2.1.4.1, lowest node first."""
    return prove(get_subtree_hash, consistency_plan(size1, size2))


def _check_size(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise VerificationError(f"{what} must be an integer, not {type(value).__name__}")
    if not 0 <= value <= _MAX_TREE_SIZE:
        raise VerificationError(f"{what} {value} is outside 0..2**64-1")
    return value


def _check_hash(value: object, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise VerificationError(f"{what} must be bytes, not {type(value).__name__}")
    digest = bytes(value)
    if len(digest) != HASH_SIZE:
        raise VerificationError(f"{what} is {len(digest)} bytes, expected {HASH_SIZE}")
    return digest


def _check_proof(proof: object) -> list[bytes]:
    if isinstance(proof, str | bytes | bytearray | memoryview) or not isinstance(proof, Iterable):
        raise VerificationError(f"proof must be a sequence of hashes, not {type(proof).__name__}")
    items = list(proof)
    if len(items) > _MAX_PROOF_LEN:
        raise VerificationError(f"proof has {len(items)} hashes, more than any tree needs")
    return [_check_hash(item, f"proof[{i}]") for i, item in enumerate(items)]


def _is_odd(n: int) -> bool:
    return bool(n & 1)


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` with ``root``.

    RFC 9162 section 2.1.3.2, step by step. Returns ``None`` on success; raises
    :class:`VerificationError` otherwise, including for any malformed argument. A root does
    not commit to the tree size, so take ``size`` and ``root`` together from one verified
    checkpoint, never the size from the party that supplied the proof.
    """
    leaf = _check_hash(leaf_hash, "leaf hash")
    index = _check_size(index, "leaf index")
    size = _check_size(size, "tree size")
    path = _check_proof(proof)
    expected = _check_hash(root, "root hash")
    if index >= size:
        raise VerificationError(f"leaf index {index} is not in a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            raise VerificationError("inclusion proof is longer than the tree is deep")
        if _is_odd(fn) or fn == sn:
            r = node_hash(p, r)
            while not _is_odd(fn) and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise VerificationError("inclusion proof is shorter than the tree is deep")
    if r != expected:
        raise VerificationError(f"inclusion proof for leaf {index} does not lead to the root")


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree (size2, root2) extends the tree (size1, root1) by appends only.

    RFC 9162 section 2.1.4.2, step by step, with two edge rules from transparency-dev/merkle
    (whose vectors we pass): a proof from the empty tree is refused as meaningless (any tree
    extends it, so "passing" would only mislead), and for equal sizes the proof must be empty
    and the roots equal; they are then compared as opaque values, since nothing is hashed.
    """
    size1 = _check_size(size1, "first tree size")
    size2 = _check_size(size2, "second tree size")
    path = _check_proof(proof)
    if size1 > size2:
        raise VerificationError(f"first tree size {size1} exceeds second tree size {size2}")
    if size1 == 0:
        raise VerificationError("a consistency proof from the empty tree is meaningless")
    if size1 == size2:
        _check_same_tree(size1, path, root1, root2)
        return
    first = _check_hash(root1, "first root hash")
    second = _check_hash(root2, "second root hash")
    if not path:
        raise VerificationError("consistency proof is empty")
    if size1 & (size1 - 1) == 0:
        path.insert(0, first)
    fr, sr = _chain_consistency(size1, size2, path)
    if fr != first:
        raise VerificationError(f"consistency proof does not lead to the root of size {size1}")
    if sr != second:
        raise VerificationError(f"consistency proof does not lead to the root of size {size2}")


def _check_same_tree(size: int, path: list[bytes], root1: object, root2: object) -> None:
    """Equal sizes: nothing to hash, so the proof is empty and the roots are simply equal."""
    if path:
        raise VerificationError("trees of equal size need an empty consistency proof")
    if not isinstance(root1, bytes | bytearray) or not isinstance(root2, bytes | bytearray):
        raise VerificationError("root hashes must be bytes")
    if bytes(root1) != bytes(root2):
        raise VerificationError(f"two different roots for the same tree size {size}")


def _chain_consistency(size1: int, size2: int, path: list[bytes]) -> tuple[bytes, bytes]:
    """Steps 3 to 7 of RFC 9162 section 2.1.4.2: recompute both roots from the path."""
    fn, sn = size1 - 1, size2 - 1
    while _is_odd(fn):
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise VerificationError("consistency proof is longer than the trees need")
        if _is_odd(fn) or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not _is_odd(fn) and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise VerificationError("consistency proof is shorter than the trees need")
    return fr, sr


class MerkleTree:
    """An in-memory log that keeps perfect-subtree hashes by (level, index), as a store would.

    Used by tests and the offline verifier (which rebuilds a tree from exported entries). Each
    level is one ``bytearray`` of concatenated 32-byte hashes, so a million leaves take about
    64 MB, and proofs go through :meth:`get_subtree_hash`, the same reader path a database uses.
    """

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0
        self.extend(leaf_hashes)

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def append(self, leaf_hash: bytes) -> int:
        """Append one leaf hash, store every perfect subtree it completes; return its index."""
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"leaf hash is {len(leaf_hash)} bytes, expected {HASH_SIZE}")
        index = self._size
        levels = self._levels
        levels[0] += leaf_hash
        n, level = index, 0
        while n & 1:
            row = levels[level]
            parent = node_hash(bytes(row[-2 * HASH_SIZE : -HASH_SIZE]), bytes(row[-HASH_SIZE:]))
            if level + 1 == len(levels):
                levels.append(bytearray())
            levels[level + 1] += parent
            n, level = n >> 1, level + 1
        self._size = index + 1
        return index

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append many leaf hashes in order."""
        for h in leaf_hashes:
            self.append(h)

    def get_subtree_hash(self, start: int, end: int) -> bytes:
        """The reader: one O(1) lookup of the perfect aligned subtree over ``[start, end)``."""
        width = end - start
        if width <= 0 or width & (width - 1) or start % width or end > self._size:
            raise ValueError(f"[{start}, {end}) is not a complete perfect subtree")
        level = width.bit_length() - 1
        offset = (start >> level) * HASH_SIZE
        return bytes(self._levels[level][offset : offset + HASH_SIZE])

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all), from O(log n) stored nodes."""
        size = self._size if size is None else size
        if not 0 <= size <= self._size:
            raise ValueError(f"tree has {self._size} leaves, not {size}")
        return subtree_hash(self.get_subtree_hash, 0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Inclusion proof of leaf ``index`` in the tree of ``size`` leaves (default: all)."""
        size = self._size if size is None else size
        if size > self._size:
            raise ValueError(f"tree has {self._size} leaves, not {size}")
        return inclusion_proof(self.get_subtree_hash, index, size)

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """Consistency proof from ``size1`` to ``size2`` leaves (default: all)."""
        size2 = self._size if size2 is None else size2
        if size2 > self._size:
            raise ValueError(f"tree has {self._size} leaves, not {size2}")
        return consistency_proof(self.get_subtree_hash, size1, size2)

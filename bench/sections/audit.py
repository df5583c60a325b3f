"""Audit log: Merkle appends and proof times at a million entries; durable appends/s later.

``merkle`` times the pure core (``broker.audit.merkle.MerkleTree``, which keeps perfect-subtree
hashes by (level, index) exactly as a store does): appends per second, and inclusion and
consistency proofs, generated and verified, in a tree of ``settings.merkle_entries`` leaves
(one million by default). A proof costs O(log n) reads, so these figures are the floor a
database-backed store adds its reads to.

``durable`` waits for the durable log store (issue: audit). When ``broker.audit.store`` exists,
replace its ``run`` with appends/s through the store (fsync'd, batched as the broker batches)
and the same proof figures read back from the database.
"""

from __future__ import annotations

import random
import time

from bench.micro import seconds_per_call
from bench.sections import NotAvailable, Section
from bench.settings import Settings
from bench.stats import Figure


def run_merkle(settings: Settings) -> list[Figure]:
    """Build one tree of ``merkle_entries`` leaves once, then time appends and proofs."""
    from broker.audit import merkle  # noqa: PLC0415 - optional module

    n = settings.merkle_entries
    leaves = [merkle.leaf_hash(i.to_bytes(8, "big")) for i in range(n)]
    tree = merkle.MerkleTree()
    t0 = time.perf_counter()
    tree.extend(leaves)
    build = time.perf_counter() - t0
    root = tree.root()
    rng = random.Random(7)  # noqa: S311 - a reproducible choice of leaves, not crypto
    appends = Figure("Merkle appends (in memory)", "appends/s", note=f"first {n:,} leaves")
    appends.add(n / build)
    incl = Figure(f"inclusion proof at {n:,} entries, generate", "µs")
    incl_v = Figure(f"inclusion proof at {n:,} entries, verify", "µs")
    cons = Figure(f"consistency proof {n // 2:,} -> {n:,}, generate", "µs")
    cons_v = Figure(f"consistency proof {n // 2:,} -> {n:,}, verify", "µs")
    old_root = tree.root(n // 2)
    for _ in range(settings.repeat):
        index = rng.randrange(n)
        proof = tree.inclusion_proof(index)
        budget = settings.micro_seconds / 4
        incl.add(1e6 * seconds_per_call(lambda i=index: tree.inclusion_proof(i), budget))
        incl_v.add(
            1e6
            * seconds_per_call(
                lambda i=index, p=proof: merkle.verify_inclusion(leaves[i], i, n, p, root),
                budget,
            )
        )
        cproof = tree.consistency_proof(n // 2)
        cons.add(1e6 * seconds_per_call(lambda: tree.consistency_proof(n // 2), budget))
        cons_v.add(
            1e6
            * seconds_per_call(
                lambda p=cproof: merkle.verify_consistency(n // 2, n, p, old_root, root), budget
            )
        )
    return [appends, incl, incl_v, cons, cons_v]


def run_durable(settings: Settings) -> list[Figure]:
    """Placeholder until the durable store lands (see the module docstring)."""
    raise NotAvailable("broker.audit.store has landed; its bench section is still to be written")


SECTION = Section(
    key="audit_merkle",
    title="audit log: Merkle core",
    requires=("broker.audit.merkle",),
    run=run_merkle,
)

DURABLE_SECTION = Section(
    key="audit_durable",
    title="audit log: durable appends/s and proofs",
    requires=("broker.audit.store",),
    run=run_durable,
)

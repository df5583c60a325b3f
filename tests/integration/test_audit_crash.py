"""SIGKILL in the middle of a load: every acknowledged append survives, no half batch is seen."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from broker.audit.checkpoint import Checkpoint, sign_checkpoint
from broker.audit.export import build_export
from broker.audit.keys import load_or_create_log_signer
from broker.audit.merkle import MerkleTree, leaf_hash
from broker.audit.query import AuditFilter
from broker.audit.store import AuditStore
from broker.audit.verify import verify_export
from broker.storage.db import create_engine_for, migrate
from tests.unit.audit.conftest import ORIGIN

REPO_ROOT = Path(__file__).resolve().parents[2]
ACKNOWLEDGED = 3000


def test_sigkill_during_load_loses_nothing_acknowledged(database_url: str, tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.audit_load", database_url, str(tmp_path)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert child.stdout is not None
    acknowledged: list[tuple[int, str, str]] = []
    try:
        for line in child.stdout:
            index, digest, call_id = line.split()
            acknowledged.append((int(index), digest, call_id))
            if len(acknowledged) >= ACKNOWLEDGED:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    # Receipts printed after the read loop stopped may still sit in the pipe: they count too.
    acknowledged.extend(
        (int(i), d, c) for i, d, c in (line.split() for line in child.stdout.read().splitlines())
    )
    child.stdout.close()
    assert len(acknowledged) >= ACKNOWLEDGED

    engine = create_engine_for(database_url)
    try:
        migrate(engine)
        store = AuditStore(engine)
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT leaf_index, entry, entry_hash, call_id FROM audit_entries"
                    " ORDER BY leaf_index"
                )
            ).all()
            nodes = conn.execute(
                sa.text("SELECT count(*) FROM audit_nodes WHERE level = 0")
            ).scalar()
        size = store.size()
        assert [r.leaf_index for r in rows] == list(range(size))  # no gap, no half batch
        assert nodes == size  # every committed leaf is integrated
        by_index = {r.leaf_index: r for r in rows}
        for index, digest, call_id in acknowledged:
            row = by_index[index]
            assert bytes(row.entry_hash).hex() == digest
            assert row.call_id == call_id
        tree = MerkleTree(leaf_hash(bytes(r.entry)) for r in rows)
        assert store.root(size) == tree.root()

        # After restart the log goes on, and a complete export verifies offline.
        signer = load_or_create_log_signer(tmp_path, ORIGIN)
        store.add_checkpoint(lambda s, r: sign_checkpoint(Checkpoint(ORIGIN, s, r), signer), 1)
        manifest, items = build_export(engine, store, signer.verifier(), AuditFilter())
        report = verify_export(manifest, list(items), signer.verifier())
        assert report.size == size
        assert report.complete
    finally:
        engine.dispose()

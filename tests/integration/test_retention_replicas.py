"""Deletion across real processes: two schedulers on one PostgreSQL database, and SIGKILL.

Each scheduler runs in its own Python process (``python -m`` this module), as broker replicas
would. They delete a shared pile of due records; every record must be destroyed exactly once,
with exactly one receipt row, and its receipt delivered. A worker killed with SIGKILL inside a
deletion transaction must leave nothing half-done: after a restart the batch completes and no
record is deleted or receipted twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from broker.retention.keyring import Keyring, LocalKeyWrapper
from broker.retention.records import RetentionStore
from broker.retention.tables import retention_receipts, retention_records
from broker.storage.db import create_engine_for, migrate

ROOT = bytes(range(32))
PAST = datetime(2024, 1, 1, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]


def _seed(url: str, n: int) -> set[str]:
    engine = create_engine_for(url)
    migrate(engine)
    store = RetentionStore(engine, Keyring.open(engine, LocalKeyWrapper(ROOT)))
    ids: set[str] = set()
    for i in range(n):
        (info,) = store.retain(
            tenant=f"t{i % 3}",
            subject="s",
            call_id=f"c{i}",
            model="m",
            request=b"payload",
            request_ttl_s=1 + i,
            now=PAST,
        )
        ids.add(info.record_id)
    engine.dispose()
    return ids


def _worker(url: str, out: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.test_retention_replicas", url, str(out), *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _state(url: str) -> tuple[int, Counter[str]]:
    engine = create_engine_for(url)
    with engine.connect() as conn:
        left = conn.execute(sa.select(sa.func.count()).select_from(retention_records)).scalar_one()
        receipts = Counter(conn.execute(sa.select(retention_receipts.c.record_id)).scalars())
    engine.dispose()
    return int(left), receipts


@pytest.mark.postgres
@pytest.mark.slow
def test_two_replicas_delete_each_record_exactly_once(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    ids = _seed(fresh_postgres_url, 300)
    go = tmp_path / "go"
    outs = [tmp_path / "a.log", tmp_path / "b.log"]
    workers = [_worker(fresh_postgres_url, out, "--batch", "5", "--go", str(go)) for out in outs]
    time.sleep(1.0)  # both processes import and connect, then start together
    go.touch()
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err.decode()[-2000:]
    left, receipts = _state(fresh_postgres_url)
    delivered = [_lines(out) for out in outs]
    assert left == 0
    assert set(receipts) == ids and max(receipts.values()) == 1
    assert Counter(delivered[0] + delivered[1]) == Counter(ids)
    assert all(delivered), "both replicas should have taken part"


@pytest.mark.slow
def test_sigkill_inside_a_deletion_batch_then_restart(database_url: str, tmp_path: Path) -> None:
    ids = _seed(database_url, 120)
    out, progress = tmp_path / "delivered.log", tmp_path / "progress.log"
    victim = _worker(database_url, out, "--batch", "10", "--slow-delete", str(progress))
    deadline = time.monotonic() + 60
    while len(_lines(progress)) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(_lines(progress)) >= 3, "the worker never reached a third batch"
    os.kill(victim.pid, signal.SIGKILL)  # it sleeps inside the third batch's transaction
    victim.communicate(timeout=30)
    assert victim.returncode == -signal.SIGKILL

    left, receipts = _state(database_url)
    assert max(receipts.values(), default=1) == 1
    assert left + len(receipts) == len(ids)  # no record both gone and kept, none lost
    assert len(receipts) == 20  # the interrupted batch was rolled back whole

    survivor = _worker(database_url, out, "--batch", "10")
    _, err = survivor.communicate(timeout=120)
    assert survivor.returncode == 0, err.decode()[-2000:]
    left, receipts = _state(database_url)
    assert left == 0
    assert set(receipts) == ids and max(receipts.values()) == 1
    delivered = Counter(_lines(out))
    assert set(delivered) == ids
    assert sum(delivered.values()) - len(ids) <= 1  # at most the one delivery in flight


def _main(argv: list[str]) -> int:
    """A broker-like process: run the scheduler until nothing is due, log deliveries."""
    import argparse  # noqa: PLC0415

    from broker.retention.scheduler import Deleter, DeletionScheduler  # noqa: PLC0415

    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--go", type=Path)
    parser.add_argument("--slow-delete", type=Path)
    args = parser.parse_args(argv)
    engine = create_engine_for(args.url)
    keyring = Keyring.open(engine, LocalKeyWrapper(ROOT))
    out = args.out.open("a", encoding="ascii")

    def on_deleted(record_id: str, *_: object) -> None:
        out.write(record_id + "\n")
        out.flush()
        os.fsync(out.fileno())

    if args.slow_delete is not None:
        progress = args.slow_delete.open("a", encoding="ascii")

        @sa.event.listens_for(engine, "before_cursor_execute")
        def _slow(conn: object, cursor: object, statement: str, *_: object) -> None:
            if statement.startswith("DELETE FROM retention_records"):
                progress.write("deleting\n")
                progress.flush()
                time.sleep(0.5)  # receipts are inserted, the records not yet deleted

    while args.go is not None and not args.go.exists():
        time.sleep(0.01)
    deleter = Deleter(engine, keyring, on_deleted=on_deleted, batch_size=args.batch)
    scheduler = DeletionScheduler(deleter, engine=engine, batch_size=args.batch)
    while scheduler.run_once(PAST + timedelta(days=3650)):
        pass
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

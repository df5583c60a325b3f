"""Retention: deletions per second of retained records (crypto-shredding by the scheduler).

Retention is built as ``broker serve`` builds it (``open_retention`` from a ``Config``, its root
key in a file outside the data directory, as the broker insists), on a throwaway database. Each
repeat retains N records (requests and answers of the workload's 2 KB payload, each encrypted
under its own data key) whose TTL has already passed at an injected ``now``, then times one
``scheduler.run_once(now)``: every due record is shredded (row and wrapped data key deleted,
one receipt row written in the same transaction, in batches of ``retention.batch_size``) and
every receipt is delivered. Deletions/s is N over that time.

Two figures per backend, because the receipts dominate and the split says where to look:

- *with audit receipts*: receipts go to ``broker.server.audit_hooks.deletions`` on a running
  ``AuditLog``, exactly the hook ``broker serve`` wires: an idempotency lookup then one durable
  ``admin.retention.deleted`` entry per record, delivered one at a time (so each waits for its
  own group commit). This is the figure the issue asks for.
- *shred only*: the same run with receipts handed to a hook that only counts them: the floor
  of the database work (select, receipt insert, delete, ``secure_delete`` and WAL checkpoint on
  SQLite, ``FOR UPDATE SKIP LOCKED`` on PostgreSQL).

Each run checks that it deleted all N records and delivered N receipts (and, with the audit
hook, that the log holds N more deletion entries), so a figure is never the speed of a run that
skipped work. PostgreSQL runs when the server ``bench.sections.audit`` finds answers.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final

import sqlalchemy as sa

from bench import workload
from bench.sections import Section
from bench.sections.audit import (
    TempDatabase,
    available_backends,
    open_audit_log,
    temporary_database,
)
from bench.settings import Settings
from bench.stats import Figure

if TYPE_CHECKING:  # imported lazily at run time: the section must load without them
    from broker.audit.writer import AuditLog
    from broker.config import Config
    from broker.retention.records import RetentionStore

RECORDS: Final = 2_000  # per timed run (default settings)
RECORDS_QUICK: Final = 400  # per timed run with --quick
_TTL_S: Final = 3_600.0
_TENANT: Final = "acme"


def _config(db: TempDatabase, root_key: Path) -> Config:
    """The configuration ``broker serve`` would read for this database and root key file."""
    from broker.config import Config, DatabaseConfig, RetentionConfig  # noqa: PLC0415

    return Config(
        data_dir=db.data_dir,
        database=DatabaseConfig(url=db.url),
        retention=RetentionConfig(root_key_file=root_key),
    )


@contextlib.contextmanager
def _root_key_file() -> Iterator[Path]:
    """A fresh root key in its own temporary directory (never beside the data, as required)."""
    from broker.retention.rootkey import generate_root_key_file  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="bench-rootkey-") as tmp:
        path = Path(tmp) / "retention-root-key"
        generate_root_key_file(path)
        yield path


@contextlib.contextmanager
def _audit_log(db: TempDatabase) -> Iterator[AuditLog]:
    """A started ``AuditLog`` (as the durable audit section builds it), closed on exit."""
    log = open_audit_log(db)
    log.start()
    try:
        yield log
    finally:
        log.close()


def _retain(store: RetentionStore, records: int, now: datetime) -> None:
    """Retain ``records`` records (request and answer per call) created at ``now``."""
    payload = workload.payload_bytes()
    for _ in range(records // 2):
        store.retain(
            tenant=_TENANT,
            subject="bench-buyer",
            call_id=str(uuid.uuid4()),
            model="bench-model",
            request=payload,
            response=payload,
            request_ttl_s=_TTL_S,
            response_ttl_s=_TTL_S,
            now=now,
        )


def _deletion_entries(engine: sa.Engine) -> int:
    """How many ``admin.retention.deleted`` entries the audit log holds."""
    from broker.audit.tables import audit_entries  # noqa: PLC0415

    with engine.connect() as conn:
        query = sa.select(sa.func.count()).where(audit_entries.c.kind == "admin.retention.deleted")
        return int(conn.execute(query).scalar_one())


def _timed_deletion(
    db: TempDatabase,
    root_key: Path,
    records: int,
    on_deleted: Callable[..., None],
    delivered: Callable[[], int],
) -> float:
    """Retain ``records`` already-due records, time one ``run_once``; deletions/s (checked).

    ``delivered()`` reports receipts delivered so far, to check the run delivered them all.
    """
    from broker.retention.setup import open_retention  # noqa: PLC0415

    retention = open_retention(_config(db, root_key), db.engine, on_deleted=on_deleted)
    if retention is None:
        raise RuntimeError("retention did not start although a root key file is configured")
    try:
        created = datetime.now(UTC)
        _retain(retention.store, records, created)
        due = created + timedelta(seconds=_TTL_S + 1)  # the TTL has passed at this ``now``
        before = delivered()
        t0 = time.perf_counter()
        deleted = retention.scheduler.run_once(due)
        elapsed = time.perf_counter() - t0
    finally:
        retention.close()
    receipts = delivered() - before
    if deleted != records or receipts != records:
        raise RuntimeError(f"retained {records}, deleted {deleted}, delivered {receipts} receipts")
    return deleted / elapsed


def _measure(backend: str, records: int, repeat: int) -> list[Figure]:
    """Both figures on one throwaway database of ``backend``, ``repeat`` times each."""
    from broker.server.audit_hooks import deletions  # noqa: PLC0415 - the hook serve wires

    audited = Figure(
        f"{backend}: deletions/s, receipts into the audit log",
        "records/s",
        note=f"{records:,} due records, one scheduler run, as broker serve wires it",
    )
    shred = Figure(
        f"{backend}: deletions/s, shred only",
        "records/s",
        note=f"{records:,} due records, one scheduler run, receipts only counted",
    )
    counted = [0]

    def count(*_: object) -> None:
        counted[0] += 1

    with temporary_database(backend) as db, _root_key_file() as root_key, _audit_log(db) as log:
        for _ in range(repeat):  # interleaved, so drift hits both alike
            audited.add(
                _timed_deletion(
                    db, root_key, records, deletions(log), lambda: _deletion_entries(db.engine)
                )
            )
            shred.add(_timed_deletion(db, root_key, records, count, lambda: counted[0]))
    return [audited, shred]


def run(settings: Settings) -> list[Figure]:
    """Per backend: deletions/s with receipts into the audit log, and shred only."""
    records = RECORDS_QUICK if settings.quick else RECORDS
    figures: list[Figure] = []
    for backend in available_backends():
        figures.extend(_measure(backend, records, settings.repeat))
    return figures


SECTION = Section(
    key="retention",
    title="retention: deletions/s",
    requires=("broker.retention.scheduler",),
    run=run,
)

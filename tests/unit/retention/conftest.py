"""Fixtures for retention: a migrated database on both engines, a keyring, a store, a deleter."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from broker.retention.keyring import Keyring, LocalKeyWrapper
from broker.retention.model import DeletionReason
from broker.retention.records import RetentionStore
from broker.retention.scheduler import Deleter, DeletionScheduler
from broker.storage.db import create_engine_for, migrate

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ROOT_KEY = bytes(range(32))


@dataclass
class Receipts:
    """What ``on_deleted`` was told, in order."""

    calls: list[tuple[str, datetime, datetime, str, DeletionReason]] = field(default_factory=list)

    def __call__(
        self, record_id: str, due: datetime, done: datetime, key_id: str, reason: DeletionReason
    ) -> None:
        self.calls.append((record_id, due, done, key_id, reason))

    @property
    def ids(self) -> list[str]:
        return [call[0] for call in self.calls]


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = create_engine_for(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def keyring(engine: sa.Engine) -> Keyring:
    return Keyring.open(engine, LocalKeyWrapper(ROOT_KEY))


@pytest.fixture
def store(engine: sa.Engine, keyring: Keyring) -> RetentionStore:
    return RetentionStore(engine, keyring, clock=lambda: NOW)


@pytest.fixture
def receipts() -> Receipts:
    return Receipts()


@pytest.fixture
def deleter(engine: sa.Engine, keyring: Keyring, receipts: Receipts) -> Deleter:
    return Deleter(engine, keyring, on_deleted=receipts, batch_size=7)


@pytest.fixture
def scheduler(engine: sa.Engine, deleter: Deleter) -> DeletionScheduler:
    return DeletionScheduler(deleter, engine=engine, now=lambda: NOW, batch_size=7)


def count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())

"""Fixtures for registry tests: a migrated store on both engines."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from broker.registry.store import RegistryStore
from broker.runtimes.oip_mapping import check_registered_mapping
from broker.storage.db import create_engine_for, migrate
from tests.unit.registry.builders import NOW


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """A migrated engine on SQLite and on PostgreSQL."""
    engine = create_engine_for(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: sa.Engine) -> RegistryStore:
    """A store whose clock is fixed, so times can be asserted exactly."""
    return RegistryStore(engine, clock=lambda: NOW, check=check_registered_mapping)

"""Engines and migrations on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from broker.config import ConfigError
from broker.storage.db import (
    alembic_config,
    create_engine_for,
    for_writes,
    migrate,
    target_metadata,
)


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """An engine on an empty database (not migrated)."""
    engine = create_engine_for(database_url)
    yield engine
    engine.dispose()


def _head() -> set[str]:
    """Every branch head: each concern keeps its tables on its own Alembic branch."""
    heads = set(ScriptDirectory.from_config(alembic_config()).get_heads())
    assert heads
    return heads


def _revision(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(MigrationContext.configure(conn).get_current_heads())


def test_migrate_upgrades_an_empty_database_to_head(engine: sa.Engine) -> None:
    assert _revision(engine) == set()
    migrate(engine)
    assert _revision(engine) == _head()
    tables = set(sa.inspect(engine).get_table_names())
    assert {"vendors", "models", "model_versions", "alembic_version"} <= tables


def test_migrate_twice_is_a_no_op(engine: sa.Engine) -> None:
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO vendors (name, create_time) VALUES ('acme', :t)"),
            {"t": "2025-01-01 00:00:00"},
        )
    migrate(engine)
    assert _revision(engine) == _head()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT name FROM vendors")).scalars().all() == ["acme"]


def test_migrations_match_the_table_classes(engine: sa.Engine) -> None:
    migrate(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, target_metadata())
    assert diff == [], "add an Alembic revision for these differences"


def test_every_revision_downgrades_cleanly(engine: sa.Engine) -> None:
    migrate(engine)
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate(engine)
    assert _revision(engine) == _head()


def test_sqlite_engine_settings(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "broker.db"
    engine = create_engine_for(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert path.exists()
    finally:
        engine.dispose()


def test_sqlite_foreign_keys_are_enforced(tmp_path: Path) -> None:
    engine = create_engine_for(f"sqlite:///{tmp_path / 'b.db'}")
    migrate(engine)
    try:
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO models (vendor_id, name, create_time) VALUES (99, 'x', :t)"),
                {"t": "2025-01-01 00:00:00"},
            )
    finally:
        engine.dispose()


def test_sqlite_transactions_are_real_and_writers_begin_immediate(tmp_path: Path) -> None:
    engine = create_engine_for(f"sqlite:///{tmp_path / 'b.db'}")
    statements: list[str] = []
    sa.event.listen(
        engine, "before_cursor_execute", lambda *args: statements.append(args[2]), named=False
    )
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT 1"))
            assert conn.exec_driver_sql("SELECT 1").scalar() == 1
        with for_writes(engine).begin() as conn:
            conn.execute(sa.text("SELECT 1"))
    finally:
        engine.dispose()
    assert "BEGIN" in statements
    assert "BEGIN IMMEDIATE" in statements


def test_in_memory_sqlite_is_shared_across_connections() -> None:
    engine = create_engine_for("sqlite://")
    try:
        migrate(engine)
        assert "vendors" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg"])
def test_postgres_urls_use_psycopg(scheme: str) -> None:
    engine = create_engine_for(f"{scheme}://user@db.invalid:5432/broker")
    try:
        assert engine.url.drivername == "postgresql+psycopg"
        assert engine.pool._pre_ping
    finally:
        engine.dispose()


@pytest.mark.parametrize("url", ["mysql://x@y/z", "not a url", "postgresql+asyncpg://x@y/z"])
def test_unsupported_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match=r"database\.url"):
        create_engine_for(url)


def test_concurrent_migrations_serialise(engine: sa.Engine) -> None:
    barrier = threading.Barrier(3)
    errors: list[Exception] = []

    def run() -> None:
        barrier.wait()
        try:
            migrate(engine)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert _revision(engine) == _head()

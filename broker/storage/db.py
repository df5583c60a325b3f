"""Database engines for both supported backends, and schema migrations.

One node runs on SQLite; several replicas share PostgreSQL. Stores take the ``Engine`` made
here and never look at the URL themselves, so every engine-specific setting lives in this module:

- SQLite: WAL (readers do not block the writer), ``foreign_keys=ON`` (off by default in
  SQLite), ``busy_timeout`` (wait for the write lock instead of failing at once) and
  ``synchronous=NORMAL`` (durable in WAL mode across application crashes, one fsync per
  checkpoint rather than per commit). The sqlite3 module's own transaction handling is switched
  off and SQLAlchemy emits ``BEGIN`` itself, because the legacy mode does not start a transaction
  for SELECT, which breaks read-then-write transactions and savepoints.
- PostgreSQL: psycopg 3, ``pool_pre_ping`` so a connection dropped by a failover or an idle
  timeout is replaced rather than failing the next call.

``migrate(engine)`` brings the schema to the newest Alembic revision. It needs no alembic.ini:
the configuration is built in code and points at the ``migrations`` folder of this package.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.pool import StaticPool
from sqlmodel import SQLModel

from broker.config import ConfigError

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"

#: Modules that define SQLModel tables. ``target_metadata()`` imports them so that Alembic's
#: autogenerate (and the test comparing migrations with the models) sees every table. A store
#: that adds tables appends its module here and adds a revision to ``migrations/versions``.
TABLE_MODULES: Final[tuple[str, ...]] = (
    "broker.registry.tables",
    "broker.audit.tables",
    "broker.retention.tables",
    "broker.enforce.vault",
    "broker.registry.secrets",
    "broker.policy.activations",
    "broker.console.stored_sessions",
    "broker.console.stored_logins",
    "broker.metering.tables",
)

SQLITE_BUSY_TIMEOUT_MS: Final = 10_000
POSTGRES_CONNECT_TIMEOUT_S: Final = 10

# Execution option read by the SQLite ``begin`` hook; see ``for_writes``.
_BEGIN_OPTION: Final = "broker_sqlite_begin"
# Arbitrary constant naming the PostgreSQL advisory lock held while migrating, so replicas that
# start together run the upgrade one after the other instead of racing on DDL.
_MIGRATION_LOCK_ID: Final = 0x6D6F64656C62726B


def create_engine_for(url: str, *, echo: bool = False) -> sa.Engine:
    """Create an Engine for a ``sqlite://`` or ``postgresql://`` URL with the broker's settings.

    ``postgresql://`` and ``postgres://`` are rewritten to ``postgresql+psycopg://`` so an
    operator can paste the URL their platform gives them. Any other backend or driver is a
    ConfigError, because the stores are only tested on these two.
    """
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError("database.url is not a valid database URL") from exc
    if parsed.drivername in {"sqlite", "sqlite+pysqlite"}:
        return _sqlite_engine(parsed, echo=echo)
    if parsed.drivername in {"postgresql", "postgres", "postgresql+psycopg"}:
        return sa.create_engine(
            parsed.set(drivername="postgresql+psycopg"),
            echo=echo,
            pool_pre_ping=True,
            connect_args={"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S},
        )
    raise ConfigError(
        f"database.url uses driver {parsed.drivername!r}; use sqlite:///path or postgresql://..."
    )


def for_writes(engine: sa.Engine) -> sa.Engine:
    """A view of ``engine`` for transactions that read and then write.

    On SQLite its transactions start with ``BEGIN IMMEDIATE``, taking the write lock up front:
    a deferred transaction that reads and then writes fails at once with SQLITE_BUSY when another
    writer committed in between, whereas an immediate one waits up to ``busy_timeout``. On
    PostgreSQL the option is ignored (use ``SELECT ... FOR UPDATE`` there). The view shares the
    engine's pool; create it once and keep it.
    """
    return engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})


def _sqlite_engine(url: URL, *, echo: bool) -> sa.Engine:
    database = url.database or ""
    in_memory = database in {"", ":memory:"} or database.startswith("file::memory:")
    kwargs: dict[str, Any] = {}
    if in_memory:
        # One shared connection, or every pooled connection would see its own empty database.
        kwargs["poolclass"] = StaticPool
    else:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url.set(drivername="sqlite+pysqlite"),
        echo=echo,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        **kwargs,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Autocommit at the driver level: SQLAlchemy's ``begin`` hook below emits BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        mode = conn.get_execution_options().get(_BEGIN_OPTION, "")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")

    return engine


def target_metadata() -> sa.MetaData:
    """The metadata of every broker table, for Alembic (imports ``TABLE_MODULES`` first)."""
    for module in TABLE_MODULES:
        importlib.import_module(module)
    return SQLModel.metadata


def alembic_config(url: str | None = None) -> AlembicConfig:
    """An Alembic configuration built in code, pointing at this package's migrations.

    ``url`` is only needed to run Alembic commands without a connection, for example
    ``command.revision(alembic_config(url), autogenerate=True, message=...)`` when adding a
    revision during development.
    """
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(engine: sa.Engine) -> None:
    """Upgrade the schema to the newest revision of every branch; a no-op when it is there.

    Each concern (registry, audit, retention, ...) may keep its tables on its own Alembic
    branch rooted at the registry's first revision, so ``heads`` (not ``head``) is upgraded.

    Runs in one transaction (both backends have transactional DDL), so a failed upgrade leaves
    the previous schema intact. On PostgreSQL an advisory lock serialises replicas that migrate
    at the same time; on SQLite ``BEGIN IMMEDIATE`` does the same.
    """
    cfg = alembic_config()
    with for_writes(engine).begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_ID)))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "heads")

"""Shared fixtures: databases on both engines, and the CI rule that nothing may be skipped.

Every store is tested on SQLite and on PostgreSQL through the ``database_url`` fixture. Outside
CI, a test whose real dependency is missing (PostgreSQL, OPA's embedded engine, ...) skips with a
reason; with ``CI=true`` it fails instead, so a green CI run means every test really ran.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

PG_ADMIN_URL = os.environ.get(
    "BROKER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason`` on a laptop; fail in CI, where every dependency must be present."""
    if IN_CI:
        pytest.fail(f"CI must run this test, but: {reason}")
    pytest.skip(reason)


def _postgres_reachable() -> str | None:
    try:
        engine = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable", reported below
        return f"PostgreSQL at {PG_ADMIN_URL} is not reachable ({type(exc).__name__})"
    return None


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """URL of a PostgreSQL server where tests may create databases."""
    problem = _postgres_reachable()
    if problem:
        skip_or_fail(problem)
    return PG_ADMIN_URL


@pytest.fixture
def fresh_postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"broker_test_{uuid.uuid4().hex[:16]}"
    admin = sa.create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(postgres_admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def opa_bindings_present() -> None:
    """OPA's embedded engine can run here (``opa-golib-python-bindings``, see the Makefile)."""
    from broker.policy.opa_embedded import bindings_problem  # noqa: PLC0415 - only when used

    problem = bindings_problem()
    if problem is not None:
        skip_or_fail(problem)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database URL, once for SQLite and once for PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'broker.db'}"
    url: str = request.getfixturevalue("fresh_postgres_url")
    return url

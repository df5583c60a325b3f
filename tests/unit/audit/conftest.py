"""Fixtures for the audit log tests: a migrated engine on both backends, keys and a log."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from broker.audit.entry import Entry, FieldAction, call_intent
from broker.audit.keys import TenantKeys
from broker.audit.note import Signer
from broker.audit.store import AuditStore
from broker.audit.writer import AuditLog
from broker.storage.db import create_engine_for, migrate

ORIGIN = "broker.test/audit"


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """A migrated engine, once on SQLite and once on PostgreSQL."""
    engine = create_engine_for(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def signer() -> Signer:
    """A fresh log key named after the test origin."""
    return Signer.generate(ORIGIN)


@pytest.fixture
def keys() -> TenantKeys:
    """Tenant digest keys from a fixed root (deterministic digests)."""
    return TenantKeys(bytes(range(32)))


@pytest.fixture
def audit_log(engine: sa.Engine, signer: Signer, keys: TenantKeys) -> Iterator[AuditLog]:
    """A started AuditLog with a fake clock; closed afterwards."""
    ticks = itertools.count(1_700_000_000)
    log = AuditLog(
        engine, signer=signer, origin=ORIGIN, tenant_keys=keys, clock=lambda: next(ticks)
    )
    log.start()
    yield log
    log.close()


_counter = itertools.count()


def make_intent(
    *, tenant: str = "acme", call_id: str | None = None, time_us: int = 1, model: str = "v/m@1"
) -> Entry:
    """A call.intent entry with a unique call id unless one is given."""
    return call_intent(
        time_us=time_us,
        call_id=call_id or f"call-{next(_counter)}",
        tenant=tenant,
        subject=f"{tenant}-svc",
        model=model,
        vendor=model.split("/", maxsplit=1)[0],
        policy_revision="rev-1",
        fields=[FieldAction("/email", ("pii.email",), "redact"), FieldAction("/age", (), "allow")],
        request_digest="hmac-sha256:" + "00" * 32,
    )


class _CountingCursor:
    """A driver cursor that records the text of every statement it executes."""

    def __init__(self, cursor: Any, statements: list[str]) -> None:
        self._cursor = cursor
        self._statements = statements

    def execute(self, sql: str, *args: Any) -> Any:
        self._statements.append(sql)
        return self._cursor.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


@pytest.fixture
def read_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Statements the stores' reads send to the driver, in order.

    Reads speak to the driver directly (fixed text), below SQLAlchemy's cursor events, so they
    are recorded where the store takes its driver cursor.
    """
    statements: list[str] = []
    original = AuditStore._cursor

    @contextlib.contextmanager
    def counting(self: AuditStore) -> Iterator[Any]:
        with original(self) as cursor:
            yield _CountingCursor(cursor, statements)

    monkeypatch.setattr(AuditStore, "_cursor", counting)
    return statements

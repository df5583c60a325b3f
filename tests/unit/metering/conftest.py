"""The audit fixtures (engine on both databases, a started AuditLog) for metering tests."""

from tests.unit.audit.conftest import audit_log, engine, keys, signer  # noqa: F401

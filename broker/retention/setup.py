"""Assembly: everything retention needs, built from the configuration in one call.

Server assembly does::

    retention = open_retention(config, engine, on_deleted=audit_hook)   # None: retention off
    if retention is not None:
        retention.scheduler.start()
        retention_pb2_grpc.add_RetentionServicer_to_server(
            RetentionServicer(retention.store, retention.deleter), server)
        ...
        retention.close()   # on shutdown: stops the scheduler, closes an HSM session

``open_retention`` raises :class:`~broker.retention.keyring.RootKeyError` (a ConfigError, so
``broker serve`` prints it and exits 2) when the root key is missing, unreadable, in the wrong
place, or not the key that wrapped the stored tenant keys; in every such case it has written
nothing. Call it after ``migrate(engine)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from broker.config import Config
from broker.logging import get_logger
from broker.retention.keyring import Keyring, KeyWrapper, RootKeyError
from broker.retention.model import DeletionHook, log_deletion, utcnow
from broker.retention.records import RetentionStore
from broker.retention.rootkey import load_key_wrapper
from broker.retention.scheduler import Deleter, DeletionScheduler
from broker.retention.tables import retention_keyring

_log = get_logger(__name__)


@dataclass
class Retention:
    """The retention components of one broker process."""

    keyring: Keyring
    store: RetentionStore
    deleter: Deleter
    scheduler: DeletionScheduler
    wrapper: KeyWrapper

    def close(self) -> None:
        """Stop the scheduler and release the root key holder (an HSM session, if any)."""
        self.scheduler.stop()
        close = getattr(self.wrapper, "close", None)
        if callable(close):
            close()


def open_retention(
    config: Config,
    engine: sa.Engine,
    *,
    on_deleted: DeletionHook = log_deletion,
    now: Callable[[], datetime] = utcnow,
    environ: Mapping[str, str] | None = None,
    wrapper: KeyWrapper | None = None,
) -> Retention | None:
    """Build retention from ``config`` (``wrapper`` overrides the configured root key).

    Returns None when no root key is configured and the database holds no keyring; refuses
    to start (RootKeyError) when no root key is configured but the database has one.
    """
    wrapper = wrapper or load_key_wrapper(config, environ)
    if wrapper is None:
        with engine.connect() as conn:
            stored = conn.execute(sa.select(retention_keyring.c.root_key_id)).scalar()
        if stored is not None:
            raise RootKeyError(
                f"the database holds retention keys wrapped by root key {stored}, but no root "
                "key is configured (retention.root_key_file, retention.root_key_env or "
                "retention.pkcs11); refusing to start rather than strand the retained data"
            )
        _log.info("retention_disabled", reason="no root key configured")
        return None
    keyring = Keyring.open(engine, wrapper)
    section = config.retention
    store = RetentionStore(engine, keyring, clock=now)
    deleter = Deleter(engine, keyring, on_deleted=on_deleted, batch_size=section.batch_size)
    scheduler = DeletionScheduler(
        deleter,
        engine=engine,
        now=now,
        interval_s=section.scheduler_interval_seconds,
        batch_size=section.batch_size,
    )
    _log.info("retention_enabled", root_key_id=wrapper.key_id)
    return Retention(keyring, store, deleter, scheduler, wrapper)

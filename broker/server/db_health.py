"""Health follows the database: NOT_SERVING while this replica cannot reach it.

Why: a replica that lost its database refuses every call (fail closed: no audit intent, no
answer), but a load balancer that only checks the TCP port would keep sending it calls. The gRPC
health service is what balancers and orchestrators ask, so it must say so: a thread probes the
database every ``interval_s`` and switches every service to NOT_SERVING when a probe fails, and
back to SERVING when one succeeds again. Calls are not gated on the probe; they fail closed on
their own, with UNAVAILABLE.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Final

import sqlalchemy as sa
from grpc_health.v1 import health, health_pb2

from broker.logging import get_logger

_log = get_logger(__name__)

_PROBE: Final = sa.text("SELECT 1")
SERVING: Final = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: Final = health_pb2.HealthCheckResponse.NOT_SERVING


class DatabaseHealth:
    """Probes ``engine`` and mirrors the result into ``servicer`` for ``services``."""

    def __init__(
        self,
        engine: sa.Engine,
        servicer: health.HealthServicer,
        services: Iterable[str],
        *,
        interval_s: float = 1.0,
    ) -> None:
        self._engine = engine
        self._servicer = servicer
        self._services = tuple(services)
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reachable = True

    def probe(self) -> bool:
        """Run one probe and update health; whether the database answered."""
        try:
            with self._engine.connect() as conn:
                conn.execute(_PROBE)
        except sa.exc.SQLAlchemyError as exc:
            if self.reachable:
                _log.error("database_unreachable", error=type(exc).__name__, health="NOT_SERVING")
            self._set(reachable=False)
            return False
        if not self.reachable:
            _log.info("database_reachable", health="SERVING")
        self._set(reachable=True)
        return True

    def start(self) -> None:
        """Probe every ``interval_s`` on a daemon thread until :meth:`stop`."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="db-health", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop probing (health is then left as it was; draining sets NOT_SERVING itself)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.probe()

    def _set(self, *, reachable: bool) -> None:
        changed = reachable != self.reachable
        self.reachable = reachable
        if changed:  # the servicer ignores set() once it is shutting down: drains stay drains
            for name in self._services:
                self._servicer.set(name, SERVING if reachable else NOT_SERVING)

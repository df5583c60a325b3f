"""Cluster-wide change notices over PostgreSQL ``LISTEN``/``NOTIFY``.

Why: replicas that share one PostgreSQL database each cache what they read from it (resolved
models, the active policy). When one replica commits a change, the others must learn of it at
once, not after a cache's TTL. PostgreSQL already has the channel every replica can reach:
``NOTIFY`` on a commit, delivered to every session that ``LISTEN``\\s, typically within
milliseconds.

A notice is a hint, never the data: its payload names what changed (``{"topic": "registry",
"vendor": ..., "name": ...}``), and the receiver reads the truth from the database. So a notice
that arrives twice, late, or out of order does no harm. A notice can be *lost* only while the
listening session is down (a database restart, a network cut): the feed then reconnects with
back-off and calls ``on_gap`` once it listens again, and the receiver drops everything it
cached, as if every notice of the gap had arrived.

One listening session (its own connection, outside the engine's pool) and one thread per
process. SQLite nodes need none of this: their processes share one machine and use
:class:`~broker.registry.generation.SharedChangeCounter` and the worker supervisor instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Final

import orjson
import psycopg
import sqlalchemy as sa

from broker.logging import get_logger

_log = get_logger(__name__)

CHANNEL: Final = "broker_changes"
#: How long the listener waits for notices before checking whether it was asked to stop.
POLL_SECONDS: Final = 0.5
RECONNECT_MIN_SECONDS: Final = 0.2
RECONNECT_MAX_SECONDS: Final = 5.0
CONNECT_TIMEOUT_SECONDS: Final = 5
#: How the listening session shows in ``pg_stat_activity``, for operators.
APPLICATION_NAME: Final = "broker-change-feed"

Notice = Mapping[str, str]
NoticeHandler = Callable[[Notice], None]

_NOTIFY: Final = sa.text("SELECT pg_notify(:channel, :payload)")


def is_postgresql(engine: sa.Engine) -> bool:
    """Whether ``engine`` talks to PostgreSQL (the only backend with a change feed)."""
    return engine.dialect.name == "postgresql"


def libpq_dsn(engine: sa.Engine) -> str:
    """The engine's URL as a libpq connection string (without SQLAlchemy's ``+psycopg``)."""
    url = engine.url.set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class ChangeFeed:
    """Publishes notices through ``engine`` and delivers every replica's notices to handlers.

    ``on_notice(notice)`` runs on the listener thread for each notice, this replica's own
    included; ``on_gap()`` runs after each (re)connection, when notices may have been missed.
    A handler's exception is logged and the feed goes on: one bad notice must not stop the
    replica from hearing the next.
    """

    def __init__(
        self,
        engine: sa.Engine,
        *,
        on_notice: NoticeHandler,
        on_gap: Callable[[], None],
        channel: str = CHANNEL,
    ) -> None:
        if not is_postgresql(engine):
            raise ValueError("a change feed needs PostgreSQL (LISTEN/NOTIFY)")
        self._engine = engine
        self._dsn = libpq_dsn(engine)
        self._channel = channel
        self._on_notice = on_notice
        self._on_gap = on_gap
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def listening(self) -> bool:
        """Whether the listening session is up (notices are being received)."""
        return self._listening.is_set()

    def publish(self, topic: str, **fields: str) -> None:
        """Tell every replica (this one too) that something under ``topic`` changed.

        Call it after the change is committed. A failure is logged, not raised: the change is
        already durable, and the other replicas' cache TTL still bounds how stale they get.
        """
        payload = orjson.dumps({"topic": topic, **fields}).decode()
        try:
            with self._engine.begin() as conn:
                conn.execute(_NOTIFY, {"channel": self._channel, "payload": payload})
        except sa.exc.SQLAlchemyError as exc:
            _log.warning("change_notice_not_sent", topic=topic, error=type(exc).__name__)

    def start(self, *, wait_seconds: float = 10.0) -> None:
        """Start listening; wait up to ``wait_seconds`` for the first ``LISTEN`` to succeed."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="change-feed", daemon=True)
        self._thread.start()
        if not self._listening.wait(wait_seconds):
            _log.warning("change_feed_not_listening", waited_seconds=wait_seconds)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop listening and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        delay = RECONNECT_MIN_SECONDS
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self._dsn,
                    autocommit=True,
                    connect_timeout=CONNECT_TIMEOUT_SECONDS,
                    application_name=APPLICATION_NAME,
                ) as conn:
                    conn.execute(f'LISTEN "{self._channel}"')
                    # Listening from here on: whatever changed before is caught up now, and
                    # only then is the feed reported up (``start`` returns after the catch-up).
                    self._handle_gap()
                    self._listening.set()
                    _log.info("change_feed_listening", channel=self._channel)
                    delay = RECONNECT_MIN_SECONDS
                    self._receive(conn)
            except psycopg.Error as exc:
                if self._listening.is_set():
                    _log.warning("change_feed_lost", error=type(exc).__name__)
                self._listening.clear()
                self._stop.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)
        self._listening.clear()

    def _receive(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        while not self._stop.is_set():
            for notify in conn.notifies(timeout=POLL_SECONDS):
                self._handle(notify.payload)
                if self._stop.is_set():
                    return
            conn.execute("SELECT 1")  # a dead session raises here, not only on the next notice

    def _handle(self, payload: str) -> None:
        try:
            notice = orjson.loads(payload)
        except orjson.JSONDecodeError:
            _log.warning("change_notice_malformed", size=len(payload))
            return
        if not isinstance(notice, dict) or not all(isinstance(v, str) for v in notice.values()):
            _log.warning("change_notice_malformed", size=len(payload))
            return
        try:
            self._on_notice(notice)
        except Exception as exc:  # noqa: BLE001 - the next notice must still be heard
            _log.exception("change_notice_failed", topic=notice.get("topic"), error=str(exc))

    def _handle_gap(self) -> None:
        try:
            self._on_gap()
        except Exception as exc:  # noqa: BLE001 - keep listening; the TTL still bounds staleness
            _log.exception("change_gap_failed", error=str(exc))

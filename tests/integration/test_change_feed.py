"""The change feed on a real PostgreSQL: notices arrive, and a lost session is noticed.

A notice sent while a replica's listening session is down is lost for good (PostgreSQL keeps
none for absent listeners), so the feed must report the gap when it listens again: that report
is what makes a replica drop its caches.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from broker.storage.changes import APPLICATION_NAME, ChangeFeed, Notice
from broker.storage.db import create_engine_for
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.postgres


class Recorder:
    def __init__(self) -> None:
        self.notices: list[Notice] = []
        self.gaps = 0
        self.lock = threading.Lock()

    def notice(self, notice: Notice) -> None:
        with self.lock:
            self.notices.append(dict(notice))

    def gap(self) -> None:
        with self.lock:
            self.gaps += 1


@pytest.fixture
def engine(fresh_postgres_url: str) -> Iterator[sa.Engine]:
    engine = create_engine_for(fresh_postgres_url)
    yield engine
    engine.dispose()


def test_every_listener_hears_every_notice_its_own_included(engine: sa.Engine) -> None:
    first, second = Recorder(), Recorder()
    feeds = [
        ChangeFeed(engine, on_notice=first.notice, on_gap=first.gap),
        ChangeFeed(engine, on_notice=second.notice, on_gap=second.gap),
    ]
    for feed in feeds:
        feed.start()
    try:
        assert all(feed.listening for feed in feeds)
        feeds[0].publish("registry", vendor="acme", name="echo")
        expected = [{"topic": "registry", "vendor": "acme", "name": "echo"}]
        wait_until(lambda: first.notices == expected == second.notices, "both heard it")
    finally:
        for feed in feeds:
            feed.stop()


def test_a_terminated_session_is_replaced_and_the_gap_reported(
    engine: sa.Engine, postgres_admin_url: str
) -> None:
    recorder = Recorder()
    feed = ChangeFeed(engine, on_notice=recorder.notice, on_gap=recorder.gap)
    feed.start()
    admin = sa.create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    try:
        assert recorder.gaps == 1  # the first LISTEN: whatever was cached before is suspect
        with admin.connect() as conn:
            killed = conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = :name AND datname = :db"
                ),
                {"name": APPLICATION_NAME, "db": engine.url.database},
            ).scalar()
        assert killed == 1
        wait_until(lambda: recorder.gaps == 2 and feed.listening, "the feed listens again")
        feed.publish("policy", revision="sha256:ab")
        wait_until(
            lambda: recorder.notices == [{"topic": "policy", "revision": "sha256:ab"}],
            "a notice after the reconnection arrives",
        )
    finally:
        feed.stop()
        admin.dispose()


def test_a_malformed_notice_is_dropped_and_the_next_one_still_heard(engine: sa.Engine) -> None:
    recorder = Recorder()
    feed = ChangeFeed(engine, on_notice=recorder.notice, on_gap=recorder.gap)
    feed.start()
    try:
        with engine.begin() as conn:  # anyone with database access can NOTIFY: not trusted
            conn.execute(sa.text("NOTIFY broker_changes, 'not json'"))
            conn.execute(sa.text("""NOTIFY broker_changes, '{"topic": ["x"]}'"""))
        feed.publish("registry", vendor="acme", name="echo")
        wait_until(lambda: len(recorder.notices) == 1, "the valid notice arrives")
        assert recorder.notices[0]["topic"] == "registry"
    finally:
        feed.stop()

"""A stopped broker server releases what it holds beyond its sockets and database."""

from __future__ import annotations

from pathlib import Path

from broker.registry.generation import SharedChangeCounter, slot_of
from tests.integration.harness import start_broker


def test_stop_closes_the_nodes_change_counter(tmp_path: Path, database_url: str) -> None:
    harness = start_broker(tmp_path, database_url)
    counter = harness.server.changes
    assert isinstance(counter, SharedChangeCounter)
    counter.bump(slot_of("acme", "chat"))
    harness.stop()
    assert counter._map.closed  # the mapping and its descriptor, once per built server
    reopened = SharedChangeCounter.for_data_dir(harness.config.data_dir)
    assert reopened.current(slot_of("acme", "chat")) == 1  # the file itself stays
    reopened.close()

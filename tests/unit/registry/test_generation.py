"""The node's shared registry change counter: seen by every process, per model, no bump lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from broker.registry.cache import CachedResolver
from broker.registry.generation import SLOTS, SharedChangeCounter, slot_of
from broker.registry.refs import ModelRef
from broker.registry.store import RegistryStore
from tests.unit.registry.builders import oip_model
from tests.unit.registry.test_cache import Clock, Counting

REF = ModelRef("acme", "iris", "1.0.0")

_BUMPER = """
import sys
from pathlib import Path
from broker.registry.generation import SharedChangeCounter
counter = SharedChangeCounter(Path(sys.argv[1]))
for _ in range(int(sys.argv[3])):
    counter.bump(int(sys.argv[2]))
"""


def test_slots_are_stable_across_processes() -> None:
    here = slot_of("acme", "iris")
    there = subprocess.run(
        [
            sys.executable,
            "-c",
            "from broker.registry.generation import slot_of as s; print(s('acme', 'iris'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert int(there) == here
    assert 0 <= here < SLOTS


def test_concurrent_bumps_from_two_processes_are_all_counted(tmp_path: Path) -> None:
    path = tmp_path / "registry.generation"
    slot = slot_of("acme", "iris")
    mine = SharedChangeCounter(path)
    bumpers = [
        subprocess.Popen([sys.executable, "-c", _BUMPER, str(path), str(slot), "300"])
        for _ in range(2)
    ]
    for _ in range(300):
        mine.bump(slot)
    assert [b.wait(timeout=60) for b in bumpers] == [0, 0]
    assert mine.current(slot) == 900
    assert mine.current((slot + 1) % SLOTS) == 0  # other models' slots untouched


def test_a_change_made_in_another_process_shows_at_once(
    store: RegistryStore, tmp_path: Path
) -> None:
    store.register(oip_model())
    path = tmp_path / "run" / "registry.generation"
    counting = Counting(store)
    here = CachedResolver(
        counting, ttl_seconds=3600, changes=SharedChangeCounter(path), clock=Clock()
    )
    there = CachedResolver(
        store, ttl_seconds=3600, changes=SharedChangeCounter(path), clock=Clock()
    )
    assert here.resolve(REF, callable_only=True).description == "Iris classifier"
    store.update("acme", "iris", "1.0.0", {"description": "v2"})
    assert here.resolve(REF, callable_only=True).description == "Iris classifier"  # cached
    there.invalidate("acme", "other")  # another model: no effect here
    assert here.resolve(REF, callable_only=True).description == "Iris classifier"
    assert counting.calls == 1

    subprocess.run(
        [sys.executable, "-c", _BUMPER, str(path), str(slot_of("acme", "iris")), "1"], check=True
    )  # as the Registry servicer of another worker process does
    assert here.resolve(REF, callable_only=True).description == "v2"
    assert counting.calls == 2


def test_close_releases_the_mapping_once(tmp_path: Path) -> None:
    counter = SharedChangeCounter(tmp_path / "run" / "registry.generation")
    counter.bump(7)
    counter.close()
    counter.close()  # a second stop of the server is harmless
    assert counter._map.closed
    assert SharedChangeCounter(tmp_path / "run" / "registry.generation").current(7) == 1

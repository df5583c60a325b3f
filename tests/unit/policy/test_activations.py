"""Bundles the cluster activated: stored with their files, refused if changed in the database,
and a store that adopted one is not pulled back by its own unchanged directory."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from broker.policy.activations import PolicyActivations, decode_files, policy_activations
from broker.policy.bundle import Bundle, bundle_from_files, load_bundle
from broker.policy.contract import Action, PolicyLoadError
from broker.policy.store import PolicyStore
from broker.storage.db import create_engine_for, migrate
from tests.unit.policy.conftest import TINY_POLICY, make_input
from tests.unit.policy.test_bundle import WriteBundle, _tiny


def elsewhere(action: str) -> Bundle:
    """A bundle as another replica's directory (or the cluster's store) holds it."""
    data = f'{{"action": "{action}"}}'.encode()
    files = [("broker/policy.rego", TINY_POLICY.encode()), ("broker/data.json", data)]
    return bundle_from_files(Path("elsewhere"), files)


@pytest.fixture
def activations(database_url: str) -> Iterator[PolicyActivations]:
    engine = create_engine_for(database_url)
    migrate(engine)
    yield PolicyActivations(engine, replica="test-host")
    engine.dispose()


def test_the_newest_activation_is_the_stored_bundle_itself(
    write_bundle: WriteBundle, activations: PolicyActivations
) -> None:
    assert activations.latest() is None
    first = load_bundle(_tiny(write_bundle, "hash"))
    second = elsewhere("drop")
    activations.record(first)
    activations.record(second)
    latest = activations.latest()
    assert latest is not None and latest.revision == second.revision
    assert latest.bundle.files == second.files and latest.bundle.data == second.data
    assert activations.latest_revision() == second.revision
    assert activations.known(first.revision) and not activations.known("sha256:00")


def test_a_stored_bundle_changed_in_the_database_is_refused(
    write_bundle: WriteBundle, activations: PolicyActivations, database_url: str
) -> None:
    bundle = load_bundle(_tiny(write_bundle, "hash"))
    activations.record(bundle)
    engine = create_engine_for(database_url)
    try:
        with engine.begin() as conn:  # someone with database access swaps the policy's data
            stored = conn.execute(sa.select(policy_activations.c.files)).scalar_one()
            conn.execute(policy_activations.update().values(files=stored.replace(b"hash", b"pass")))
    finally:
        engine.dispose()
    with pytest.raises(PolicyLoadError, match="changed outside the broker"):
        activations.latest()
    with pytest.raises(PolicyLoadError, match="malformed"):
        decode_files(bundle.revision, b"{not json")


def test_an_adopted_bundle_is_kept_until_the_directory_itself_is_edited(
    write_bundle: WriteBundle,
) -> None:
    root = _tiny(write_bundle, "hash")
    store = PolicyStore(root)
    store.reload()
    adopted = elsewhere("drop")
    assert store.activate(adopted).status == "loaded"
    assert store.reload_if_edited().status == "unchanged"  # the watcher's poll: no edit
    assert store.revision == adopted.revision
    assert store.decide(make_input()).fields["/customer/name"] == Action("drop")

    (root / "broker/data.json").write_text('{"action": "tokenize"}')
    assert store.reload_if_edited().status == "loaded"
    assert store.decide(make_input()).fields["/customer/name"] == Action("tokenize")


def test_an_explicit_reload_activates_the_directory_over_an_adopted_bundle(
    write_bundle: WriteBundle,
) -> None:
    root = _tiny(write_bundle, "hash")
    store = PolicyStore(root)
    first = store.reload().revision
    assert store.activate(elsewhere("drop")).status == "loaded"
    assert store.reload().revision == first  # SIGHUP, ReloadPolicy: the operator's choice


def test_the_watcher_does_not_undo_an_adoption(write_bundle: WriteBundle) -> None:
    root = _tiny(write_bundle, "hash")
    store = PolicyStore(root)
    store.reload()
    store.start_watching(interval_s=0.01)
    try:
        adopted = elsewhere("drop")
        store.activate(adopted)
        time.sleep(0.2)  # many polls of an unchanged directory (no assertion on timing)
        assert store.revision == adopted.revision
    finally:
        store.stop_watching()

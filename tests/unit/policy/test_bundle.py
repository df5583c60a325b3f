"""Bundles: loading, data mounting, the revision digest, reload with fallback, watching."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from broker.policy.bundle import bundle_fingerprint, bundle_revision, load_bundle
from broker.policy.contract import Action, PolicyError, PolicyLoadError
from broker.policy.store import PolicyStore
from tests.unit.policy.conftest import SHIPPED_BUNDLE, TINY_POLICY, make_input

WriteBundle = Callable[[dict[str, str]], Path]

BROKEN = 'package broker\n\nimport rego.v1\n\ndecision := {\n  "allow": \n}\n'


def _tiny(write_bundle: WriteBundle, action: str = "hash") -> Path:
    return write_bundle(
        {"broker/policy.rego": TINY_POLICY, "broker/data.json": f'{{"action": "{action}"}}'}
    )


def _wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_shipped_bundle_layout() -> None:
    bundle = load_bundle(SHIPPED_BUNDLE)
    assert [p for p, _ in bundle.policies] == ["broker/decision.rego"]
    assert [p for p, _ in bundle.tests] == ["broker/decision_test.rego"]
    assert bundle.data["broker"]["tenants"]["acme"]["retention"]["request_ttl_s"] == 604800


def test_revision_construction_is_the_documented_one(write_bundle: WriteBundle) -> None:
    root = write_bundle({"b/p.rego": "package b\n", "a.json": "{}", ".hidden/x.rego": "junk"})
    expected = hashlib.sha256()
    for rel, content in (("a.json", b"{}"), ("b/p.rego", b"package b\n")):
        expected.update(len(rel).to_bytes(8, "big") + rel.encode())
        expected.update(len(content).to_bytes(8, "big") + content)
    assert load_bundle(root).revision == "sha256:" + expected.hexdigest()
    assert bundle_revision([("a.json", b"{}"), ("b/p.rego", b"package b\n")]) == (
        "sha256:" + expected.hexdigest()
    )


def test_revision_is_unambiguous() -> None:
    assert bundle_revision([("ab", b"c")]) != bundle_revision([("a", b"bc")])


def test_revision_changes_with_any_file(write_bundle: WriteBundle) -> None:
    root = _tiny(write_bundle)
    first = load_bundle(root).revision
    assert load_bundle(root).revision == first
    (root / "broker/data.json").write_text('{"action": "drop"}')
    second = load_bundle(root).revision
    assert second != first
    (root / "broker/extra_test.rego").write_text("package broker_test\n")
    assert load_bundle(root).revision not in {first, second}


def test_data_files_mount_by_directory(write_bundle: WriteBundle) -> None:
    root = write_bundle(
        {
            "p.rego": "package x\n",
            "data.json": '{"top": 1}',
            "a/b/data.json": '{"k": 2}',
            "a/b/more.json": '{"j": 3}',
            "c/data.json": "[1, 2]",
        }
    )
    data = load_bundle(root).data
    assert data == {"top": 1, "a": {"b": {"k": 2, "j": 3}}, "c": [1, 2]}


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        ({"p.rego": "package x\n", "a/d.json": '{"k": 1}', "a/e.json": '{"k": 2}'}, "twice"),
        ({"p.rego": "package x\n", "data.json": "[1]"}, "must hold an object"),
        ({"p.rego": "package x\n", "d/data.json": '{\n  "k": 1,\n}'}, "d/data.json:3"),
        ({"data.json": "{}"}, "no .rego policy"),
        ({"p.rego": "package x\n", "a/b/d.json": "{}", "a/data.json": "3"}, "defined twice"),
        ({"p.rego": "package x\n", "a/data.json": "3", "a/z/d.json": "{}"}, "overlaps a value"),
    ],
)
def test_bad_bundles_fail_to_load(
    write_bundle: WriteBundle, files: dict[str, str], fragment: str
) -> None:
    with pytest.raises(PolicyLoadError) as info:
        load_bundle(write_bundle(files))
    assert fragment in info.value.reason


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError, match="does not exist"):
        load_bundle(tmp_path / "nope")


def test_store_denies_until_a_bundle_loads(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path / "nope")
    assert store.reload().status == "failed"
    assert store.revision is None
    with pytest.raises(PolicyError, match="no policy is loaded"):
        store.decide(make_input())


def test_reload_keeps_old_revision_on_syntax_error(write_bundle: WriteBundle) -> None:
    root = _tiny(write_bundle)
    store = PolicyStore(root)
    assert store.reload().status == "loaded"
    good = store.revision
    assert store.reload().status == "unchanged"
    (root / "broker/policy.rego").write_text(BROKEN)
    with capture_logs() as logs:
        outcome = store.reload()
    assert outcome.status == "failed"
    assert store.revision == good
    assert store.decide(make_input()).fields["/customer/name"] == Action("hash")
    [event] = [e for e in logs if e["event"] == "policy.reload_failed"]
    assert event["file"] == "broker/policy.rego"
    assert event["line"] == 7
    assert event["kept_revision"] == good
    assert event["log_level"] == "error"


def test_reload_swaps_and_clears_cache(write_bundle: WriteBundle) -> None:
    root = _tiny(write_bundle)
    store = PolicyStore(root)
    store.reload()
    store.decide(make_input())
    assert store.cache.stats.size == 1
    (root / "broker/data.json").write_text('{"action": "drop"}')
    assert store.reload().status == "loaded"
    assert store.cache.stats.size == 0
    assert store.decide(make_input()).fields["/customer/name"] == Action("drop")


def test_watcher_reloads_on_file_change(write_bundle: WriteBundle) -> None:
    root = _tiny(write_bundle)
    store = PolicyStore(root)
    store.reload()
    first = store.revision
    store.start_watching(interval_s=0.02)
    try:
        data = root / "broker/data.json"
        data.write_text('{"action": "drop"}')
        os.utime(data, ns=(1, 1))  # a different mtime even on coarse-grained filesystems
        assert _wait_for(lambda: store.revision != first)
        assert store.decide(make_input()).fields["/customer/name"] == Action("drop")
        second = store.revision
        data.write_text('{"action": "tokenize"}')  # a change seen only by polling
        assert _wait_for(lambda: store.revision != second)
        assert store.decide(make_input()).fields["/customer/name"] == Action("tokenize")
    finally:
        store.stop_watching()
    assert not any(t.name == "policy-watcher" for t in threading.enumerate())


def test_request_reload_without_watcher(write_bundle: WriteBundle) -> None:
    root = _tiny(write_bundle)
    store = PolicyStore(root)
    store.request_reload()  # what the SIGHUP handler calls
    assert _wait_for(lambda: store.revision is not None)


def test_request_reload_wakes_the_watcher(write_bundle: WriteBundle) -> None:
    root = _tiny(write_bundle)
    store = PolicyStore(root)
    store.reload()
    first = store.revision
    store.start_watching(interval_s=3600)
    try:
        (root / "broker/data.json").write_text('{"action": "encrypt"}')
        store.request_reload()
        assert _wait_for(lambda: store.revision != first)
    finally:
        store.stop_watching()


def test_fingerprint_sees_size_and_mtime(write_bundle: WriteBundle) -> None:
    root = _tiny(write_bundle)
    before = bundle_fingerprint(root)
    (root / "broker/data.json").write_text('{"action": "tokenize"}')
    assert bundle_fingerprint(root) != before
    assert bundle_fingerprint(root / "missing") == ()

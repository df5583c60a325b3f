"""Policy bundles on disk, their revision, and the store that hot-swaps the active engine.

A bundle is a directory: every ``*.rego`` file is a policy (``*_test.rego`` files are its tests)
and every ``*.json`` file is data, mounted as in OPA bundles: ``broker/data.json`` becomes
``data.broker``. Hidden files and directories (``.git``, editor swap files) are ignored.

Revision: ``"sha256:" + hex(SHA-256(entries))`` where the entries are the bundle's ``.rego``
and ``.json`` files (tests included: changing a test is a new revision) sorted by relative POSIX
path (compared as UTF-8 bytes), each written as::

    u64be(len(path)) || path (UTF-8) || u64be(len(content)) || content (raw bytes)

The length prefixes make the encoding unambiguous, so no two different bundles share a digest
by moving bytes between a name and a content.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from broker.logging import get_logger
from broker.observability.metrics import count_plan_lookup
from broker.policy.cache import PlanCache
from broker.policy.contract import Plan, PolicyError, PolicyInput, PolicyLoadError
from broker.policy.engine import PolicyEngine, RegorusEngine

_log = get_logger(__name__)

Source = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Bundle:
    """A loaded bundle: policy and test sources (relative path, text), merged data, revision."""

    root: Path
    policies: tuple[Source, ...]
    tests: tuple[Source, ...]
    data: Mapping[str, Any]
    revision: str
    #: The raw (relative path, content) entries the revision is the digest of, sorted: what a
    #: cluster stores so that other replicas load exactly this bundle.
    files: tuple[tuple[str, bytes], ...] = ()


def _bundle_files(root: Path) -> list[tuple[str, Path]]:
    files: list[tuple[str, Path]] = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix in (".rego", ".json"):
            files.append((rel.as_posix(), path))
    files.sort(key=lambda item: item[0].encode())
    return files


def bundle_revision(entries: list[tuple[str, bytes]]) -> str:
    """The revision of sorted (relative path, content) entries; see the module docstring."""
    digest = hashlib.sha256()
    for rel, content in entries:
        name = rel.encode()
        digest.update(len(name).to_bytes(8, "big") + name)
        digest.update(len(content).to_bytes(8, "big") + content)
    return "sha256:" + digest.hexdigest()


def _mount(data: dict[str, Any], rel: str, value: Any) -> None:
    """Place ``value`` at the data path named by the file's directory, refusing overlaps."""
    parts = list(Path(rel).parent.parts)
    if not parts:
        if not isinstance(value, dict):
            raise PolicyLoadError("a data file at the bundle root must hold an object", file=rel)
        target, items = data, value
    else:
        target = data
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise PolicyLoadError(f"data path {'.'.join(parts)} overlaps a value", file=rel)
        if not isinstance(value, dict):
            if parts[-1] in target:
                raise PolicyLoadError(f"data.{'.'.join(parts)} is defined twice", file=rel)
            target[parts[-1]] = value
            return
        items = value
        target = target.setdefault(parts[-1], {})
    for key, item in items.items():
        if key in target:
            raise PolicyLoadError(f"data key {key!r} is defined twice", file=rel)
        target[key] = item


def load_bundle(root: Path | str) -> Bundle:
    """Read a bundle directory; a missing directory or a malformed JSON file raises
    :class:`PolicyLoadError` (with the JSON error's line)."""
    root = Path(root)
    if not root.is_dir():
        raise PolicyLoadError(f"policy bundle directory {root} does not exist")
    return bundle_from_files(root, [(rel, path.read_bytes()) for rel, path in _bundle_files(root)])


def bundle_from_files(root: Path, files: list[tuple[str, bytes]]) -> Bundle:
    """A bundle from (relative path, content) entries, as ``load_bundle`` reads them from
    ``root``; ``root`` only names where they came from (a directory, or the cluster's store)."""
    entries = sorted(
        ((rel, content) for rel, content in files if rel.endswith((".rego", ".json"))),
        key=lambda item: item[0].encode(),
    )
    policies: list[Source] = []
    tests: list[Source] = []
    data: dict[str, Any] = {}
    for rel, content in entries:
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyLoadError("not UTF-8", file=rel) from None
        if rel.endswith("_test.rego"):
            tests.append((rel, text))
        elif rel.endswith(".rego"):
            policies.append((rel, text))
        else:
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise PolicyLoadError(exc.msg, file=rel, line=exc.lineno) from None
            _mount(data, rel, value)
    if not policies:
        raise PolicyLoadError(f"policy bundle {root} holds no .rego policy")
    return Bundle(
        root, tuple(policies), tuple(tests), data, bundle_revision(entries), tuple(entries)
    )


def bundle_fingerprint(root: Path) -> tuple[tuple[str, int, int], ...]:
    """(path, mtime_ns, size) of every bundle file: cheap to compute, changes on any edit."""
    found: list[tuple[str, int, int]] = []
    for rel, path in _bundle_files(root) if root.is_dir() else []:
        try:
            stat = path.stat()
        except OSError:
            continue
        found.append((rel, stat.st_mtime_ns, stat.st_size))
    return tuple(found)


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """What a reload did: ``loaded`` a new revision, found it ``unchanged``, or ``failed``."""

    status: Literal["loaded", "unchanged", "failed"]
    revision: str | None
    error: str | None = None


EngineFactory = Callable[[Bundle], PolicyEngine]


class PolicyStore:
    """Holds the active engine and swaps it atomically on reload; decides through the cache.

    Until a bundle loads, :meth:`decide` denies. A failed reload keeps the previous engine, so a
    typo in a policy never takes the broker down nor opens it up.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        engine_factory: EngineFactory = RegorusEngine,
        cache: PlanCache | None = None,
    ) -> None:
        self._root = Path(root)
        self._factory = engine_factory
        self.cache = cache if cache is not None else PlanCache()
        self._engine: PolicyEngine | None = None
        self._reload_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._listeners: list[Callable[[str, str | None], None]] = []
        self._bundle: Bundle | None = None
        # The revision last read from this store's own directory: the watcher activates a
        # bundle only when the directory's content changes, never merely because another
        # revision (adopted from the cluster) is active.
        self._disk_revision: str | None = None
        self._explicit = False  # request_reload() asked the watcher for an explicit reload

    @property
    def engine(self) -> PolicyEngine | None:
        """The active engine (``None`` until a bundle has loaded)."""
        return self._engine

    @property
    def bundle(self) -> Bundle | None:
        """The active bundle (``None`` until one has loaded, or with an engine that has none)."""
        return self._bundle

    @property
    def revision(self) -> str | None:
        """The active revision, for audit entries and the Policies service."""
        engine = self._engine
        return engine.revision if engine is not None else None

    def decide(self, policy_input: PolicyInput) -> Plan:
        """A plan from the cache or the engine; :class:`PolicyError` if none can be made."""
        engine = self._engine  # one read: the whole decision uses one revision
        if engine is None:
            raise PolicyError("no policy is loaded")
        key = self.cache.key(engine.revision, policy_input)
        plan = self.cache.get(key)
        count_plan_lookup(hit=plan is not None)
        if plan is None:
            plan = engine.decide(policy_input)
            self.cache.put(key, plan)
        return plan

    def reload(self) -> ReloadOutcome:
        """Load the bundle directory again and activate it if its revision is not the active one.

        This is the explicit reload (SIGHUP, ``ReloadPolicy``): in a cluster it activates this
        replica's bundle even if another revision was adopted since.
        """
        return self._load_directory(only_if_edited=False)

    def reload_if_edited(self) -> ReloadOutcome:
        """Activate the bundle directory only if its content changed since it was last read."""
        return self._load_directory(only_if_edited=True)

    def activate(self, bundle: Bundle) -> ReloadOutcome:
        """Make ``bundle`` the active one (a bundle adopted from the cluster, say)."""
        with self._reload_lock:
            current = self._engine
            if current is not None and bundle.revision == current.revision:
                return ReloadOutcome("unchanged", current.revision)
            try:
                engine = self._factory(bundle)
            except PolicyLoadError as exc:
                return self._failed(exc, current)
            return self._swap(engine, bundle, current)

    def _load_directory(self, *, only_if_edited: bool) -> ReloadOutcome:
        with self._reload_lock:
            current = self._engine
            try:
                bundle = load_bundle(self._root)
                edited = bundle.revision != self._disk_revision
                self._disk_revision = bundle.revision
                if current is not None and (
                    bundle.revision == current.revision or (only_if_edited and not edited)
                ):
                    return ReloadOutcome("unchanged", current.revision)
                engine = self._factory(bundle)
            except PolicyLoadError as exc:
                return self._failed(exc, current)
            return self._swap(engine, bundle, current)

    def _failed(self, exc: PolicyLoadError, current: PolicyEngine | None) -> ReloadOutcome:
        _log.error(
            "policy.reload_failed",
            file=exc.file,
            line=exc.line,
            error=exc.reason,
            kept_revision=current.revision if current else None,
        )
        return ReloadOutcome("failed", self.revision, exc.reason)

    def _swap(
        self, engine: PolicyEngine, bundle: Bundle, current: PolicyEngine | None
    ) -> ReloadOutcome:
        self._engine = engine
        self._bundle = bundle
        self.cache.clear()
        _log.info(
            "policy.reloaded",
            revision=engine.revision,
            previous=current.revision if current else None,
        )
        for listener in tuple(self._listeners):
            listener(engine.revision, current.revision if current else None)
        return ReloadOutcome("loaded", engine.revision)

    def on_activated(self, listener: Callable[[str, str | None], None]) -> None:
        """Call ``listener(revision, previous)`` after each new revision is swapped in.

        The audit log listens here, so every policy activation is on the record. A listener's
        exception propagates to whoever triggered the reload (the new revision stays active).
        """
        self._listeners.append(listener)

    def request_reload(self) -> None:
        """Ask for a reload without blocking: safe to call from a SIGHUP handler.

        With the watcher running it is woken; otherwise a short-lived thread reloads.
        """
        if self._watcher is not None and self._watcher.is_alive():
            self._explicit = True
            self._wake.set()
        else:
            threading.Thread(target=self.reload, name="policy-reload", daemon=True).start()

    def start_watching(self, interval_s: float = 2.0) -> None:
        """Poll the bundle's (mtime, size) every ``interval_s`` and reload when it changes.

        The first poll always reads the bundle (an unchanged one costs one read and one digest),
        so an edit made between the last reload and this call is not missed.
        """
        if self._watcher is not None and self._watcher.is_alive():
            return
        self._stop.clear()
        self._wake.set()
        seen = bundle_fingerprint(self._root)
        self._watcher = threading.Thread(
            target=self._watch, args=(interval_s, seen), name="policy-watcher", daemon=True
        )
        self._watcher.start()

    def stop_watching(self, timeout_s: float = 5.0) -> None:
        """Stop the watcher thread and wait for it."""
        self._stop.set()
        self._wake.set()
        if self._watcher is not None:
            self._watcher.join(timeout_s)
            self._watcher = None

    def _watch(self, interval_s: float, seen: tuple[tuple[str, int, int], ...]) -> None:
        while not self._stop.is_set():
            woken = self._wake.wait(interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            now = bundle_fingerprint(self._root)
            if woken or now != seen:
                seen = now
                explicit, self._explicit = self._explicit, False
                try:
                    if explicit:
                        self.reload()
                    else:
                        self.reload_if_edited()
                except Exception:  # noqa: BLE001 - a dead watcher would freeze the policy
                    _log.exception("policy.watcher_error")

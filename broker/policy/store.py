"""The policy store: holds the active engine, hot-swaps it on reload, decides through the cache.

It sits above :mod:`.bundle` (what a bundle is and how it is read) and :mod:`.engine` (what
evaluates one), so that those two read top-down: an engine is built from a bundle, and the store
builds engines from bundles. Until a bundle loads the store denies, and a failed reload keeps the
previous engine.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from broker.logging import get_logger
from broker.observability.metrics import count_plan_lookup
from broker.policy.bundle import Bundle, bundle_fingerprint, load_bundle
from broker.policy.cache import PlanCache
from broker.policy.contract import Plan, PolicyError, PolicyInput, PolicyLoadError
from broker.policy.engine import PolicyEngine, RegorusEngine

_log = get_logger(__name__)


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

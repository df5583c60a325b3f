"""Warm worker pools, one per (package digest, tenant): a worker never serves two tenants.

A call borrows an idle worker of its own (package, tenant) pool or starts one (the package's
digest is re-checked at every start); at most ``resources.concurrency`` workers per pool exist,
and a caller waits for one until its deadline (a streamed call holds its worker until the
answer ends). A worker is retired, and its scratch tmpfs dies with it, after
``max_calls_per_worker`` calls, ``idle_seconds`` unused, a crash, a timeout, a limit hit or a
stream left mid-answer; the next call gets a fresh one.

Whatever a retired worker wrote to stdout/stderr goes to the log as one ``sandbox_worker_output``
event tagged with its tenant and package (capped), at **debug** level only: the vendor's code may
print anything, payload values included, and the broker's log must not carry them. An operator
who needs it to debug a package turns ``[logging] level = "debug"`` on, knowing what it shows.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.errors import Cancelled, DeadlineExceeded, Unavailable
from broker.logging import get_logger
from broker.observability import metrics
from broker.packages.environment import Environment, Environments
from broker.packages.errors import EnvironmentTampered
from broker.packages.store import PackageStore, StoredPackage
from broker.runtimes.base import call_cpu_us
from broker.runtimes.sandbox import cpu
from broker.runtimes.sandbox.errors import (
    SandboxError,
    SandboxLimitExceeded,
    SandboxModelError,
    SandboxUnconfined,
    SandboxViolation,
)
from broker.runtimes.sandbox.launcher import SandboxLauncher, Worker
from broker.runtimes.sandbox.worker_stream import WorkerStream
from sandbox.protocol import WorkerLimits

_log = get_logger(__name__)

LauncherFactory = Callable[[tuple[Path, ...]], SandboxLauncher]
Canceller = Callable[[], None]


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """How long workers live, and what every worker gets beyond its manifest's resources."""

    max_calls_per_worker: int = 1000
    idle_seconds: float = 300.0
    startup_cpu_seconds: int = 30  # imports and model loading, on top of the per-call budgets
    max_frame_bytes: int = 16 * 1024 * 1024
    output_log_bytes: int = 4096


def limits_for(package: StoredPackage, settings: PoolSettings) -> WorkerLimits:
    """A worker's lifetime limits; the per-call CPU budget is applied by :mod:`cpu`."""
    res = package.manifest.resources
    lifetime_cpu = settings.startup_cpu_seconds + res.cpu_seconds_per_call * min(
        settings.max_calls_per_worker, 1000
    )
    return WorkerLimits(
        memory_bytes=res.memory_mb * 1024 * 1024,
        cpu_seconds=lifetime_cpu,
        max_frame_bytes=settings.max_frame_bytes,
    )


@dataclass(eq=False)
class _Slot:
    worker: Worker
    pool: _Pool
    model: str
    calls: int = 0
    last_used: float = 0.0
    retired: bool = False


@dataclass(eq=False)
class _Pool:
    package: StoredPackage
    tenant: str
    capacity: int
    idle: list[_Slot] = field(default_factory=list)
    live: set[_Slot] = field(default_factory=set)
    starting: int = 0


@dataclass(frozen=True, slots=True)
class Violation:
    """A limit hit or a seccomp kill, as the broker sees it: no payload, no model output."""

    reason: str
    tenant: str
    package: str
    model: str


ViolationHook = Callable[[Violation], None]


class WorkerPools:
    """Every pool of a sandbox runtime; thread-safe. ``close()`` kills every worker."""

    def __init__(
        self,
        store: PackageStore,
        environments: Environments,
        *,
        settings: PoolSettings | None = None,
        launcher_factory: LauncherFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_violation: ViolationHook | None = None,
    ) -> None:
        self._on_violation = on_violation
        self._tampered_seen: set[tuple[str, str, str]] = set()
        self._store = store
        self._envs = environments
        self.settings = settings or PoolSettings()
        self._make_launcher = launcher_factory or (lambda dirs: SandboxLauncher(env_dirs=dirs))
        self._clock = clock
        self._cond = threading.Condition()
        self._pools: dict[tuple[str, str], _Pool] = {}
        self._launchers: dict[tuple[Path, ...], SandboxLauncher] = {}
        self._closed = False
        self._watchdog = cpu.CpuWatchdog()
        self._stop = threading.Event()
        self._janitor: threading.Thread | None = None

    def call(
        self,
        digest: str,
        tenant: str,
        payload: dict[str, Any],
        *,
        timeout: float,
        model: str = "",
        on_cancel: Callable[[Canceller], None] | None = None,
    ) -> dict[str, Any]:
        """Run one call on a worker of ``tenant``'s pool for package ``digest``."""
        with self._borrow(digest, tenant, timeout, model, on_cancel) as (worker, remaining):
            return worker.call(payload, timeout=remaining)

    @contextlib.contextmanager
    def streaming(
        self,
        digest: str,
        tenant: str,
        payload: dict[str, Any],
        *,
        timeout: float,
        model: str = "",
        on_cancel: Callable[[Canceller], None] | None = None,
    ) -> Iterator[WorkerStream]:
        """Run one streamed call on a worker of ``tenant``'s pool; the worker is held inside.

        The deadline, CPU budget and cancellation of :meth:`call` cover the whole stream. An
        error raised while reading it must leave through this context (so the worker is
        retired and the error mapped as for a call). Leaving before the end of the answer
        kills the worker (``WorkerStream.close``); the pool then retires it.
        """
        with (
            self._borrow(digest, tenant, timeout, model, on_cancel) as (worker, remaining),
            worker.stream(payload, timeout=remaining) as chunks,
        ):
            yield chunks

    @contextlib.contextmanager
    def _borrow(
        self,
        digest: str,
        tenant: str,
        timeout: float,
        model: str,
        on_cancel: Callable[[Canceller], None] | None,
    ) -> Iterator[tuple[Worker, float]]:
        """A worker of the pool and the time left, for the body of one call; then give it back.

        Errors inside are mapped here: a model error keeps the worker, anything else retires it
        (cancellation, the CPU budget and a cgroup OOM kill named as such).
        """
        deadline = self._clock() + timeout
        slot = self._acquire(digest, tenant, deadline, model)
        cancelled = threading.Event()
        over_cpu = threading.Event()
        lease = threading.Lock()
        # Set (under ``lease``) once the worker is given back or retired. grpcio runs an RPC's
        # callbacks at every termination, after the answer was sent, when the worker may be
        # idle or already serving the next call: a canceller that outlives its call must not
        # kill it (the soak found workers SIGKILLed in the middle of the tenant's next call).
        returned = threading.Event()
        if on_cancel is not None:

            def cancel() -> None:
                with lease:
                    if not returned.is_set() and slot.worker.alive and not slot.retired:
                        cancelled.set()
                        slot.worker.kill()

            on_cancel(cancel)

        def cpu_spent() -> None:
            over_cpu.set()
            slot.worker.kill()

        budget = slot.pool.package.manifest.resources.cpu_seconds_per_call
        watch = self._watchdog.watch(slot.worker.pid, budget, cpu_spent)
        used = cpu.CallCpu(slot.worker.pid)
        try:
            remaining = max(deadline - self._clock(), 0.001)  # a started worker gets its chance
            _require_confined(slot.worker)  # its cgroup may have gone while it sat idle
            try:
                yield slot.worker, remaining
            finally:
                _require_limits_held(slot.worker)
        except SandboxModelError:
            with lease:
                returned.set()
                self._release(slot)
            raise
        except BaseException as exc:
            with lease:
                returned.set()
                self._retire(slot, "limit cpu" if over_cpu.is_set() else _reason(exc))
            if cancelled.is_set():
                raise Cancelled("the caller cancelled the call; its worker was stopped") from exc
            if over_cpu.is_set():
                raise SandboxLimitExceeded("cpu") from exc
            raise
        finally:
            self._watchdog.unwatch(watch)
            call_cpu_us.set(call_cpu_us.get() + used.used_us())
        with lease:
            returned.set()
            self._release(slot)

    def sweep(self) -> int:
        """Retire workers idle for longer than ``idle_seconds``; returns how many."""
        now = self._clock()
        with self._cond:
            stale = [
                slot
                for pool in self._pools.values()
                for slot in pool.idle
                if now - slot.last_used >= self.settings.idle_seconds
            ]
        for slot in stale:
            self._retire(slot, "idle")
        return len(stale)

    def workers(self, digest: str, tenant: str) -> list[Worker]:
        """The live workers of one pool (for tests and metrics)."""
        with self._cond:
            pool = self._pools.get((digest, tenant))
            return [slot.worker for slot in pool.live] if pool else []

    def close(self) -> None:
        """Kill every worker and close the launchers it made; later calls raise ``Unavailable``."""
        self._stop.set()
        with self._cond:
            self._closed = True
            slots = [slot for pool in self._pools.values() for slot in pool.live]
            launchers = list(self._launchers.values())
            self._cond.notify_all()
        for slot in slots:
            self._retire(slot, "closed")
        for launcher in launchers:
            launcher.close()  # their zygotes

    # --- internals --------------------------------------------------------------------------

    def _sweep_forever(self) -> None:
        """The janitor: retire idle workers until ``close()`` (daemon, started on first use)."""
        interval = min(max(self.settings.idle_seconds / 4, 1.0), 60.0)
        while not self._stop.wait(interval):
            self.sweep()

    def _acquire(self, digest: str, tenant: str, deadline: float, model: str) -> _Slot:
        pool = self._pool(digest, tenant)
        with self._cond:
            if self._janitor is None and not self._closed:
                self._janitor = threading.Thread(
                    target=self._sweep_forever, name="sandbox-pool-janitor", daemon=True
                )
                self._janitor.start()
            while True:
                if self._closed:
                    raise Unavailable("the sandbox runtime is shut down")
                while pool.idle:
                    slot = pool.idle.pop()
                    if slot.worker.alive:
                        return slot
                    self._forget(pool, slot)
                if len(pool.live) + pool.starting < pool.capacity:
                    pool.starting += 1
                    break
                remaining = deadline - self._clock()
                if remaining <= 0 or not self._cond.wait(remaining):
                    raise DeadlineExceeded(
                        "every worker of this model is busy for this tenant (its concurrency); "
                        "the deadline expired while waiting"
                    )
        try:
            package = self._store.get(digest)  # the digest is re-checked at every worker start
            env = self._find_environment(package, tenant, model)
            worker = self._launcher(env.mounts).start(
                package.path, limits=limits_for(package, self.settings), tenant=tenant
            )
        except BaseException:
            with self._cond:
                pool.starting -= 1
                self._cond.notify()
            raise
        slot = _Slot(worker=worker, pool=pool, model=model, last_used=self._clock())
        with self._cond:
            pool.starting -= 1
            pool.live.add(slot)
            if self._closed:
                self._forget(pool, slot)
                raise Unavailable("the sandbox runtime is shut down")
            metrics.record_sandbox_pool(self._live_workers())
        metrics.count_sandbox_cold_start()
        _log.info("sandbox_worker_started", tenant=tenant, package=digest, model=model)
        return slot

    def _find_environment(self, package: StoredPackage, tenant: str, model: str) -> Environment:
        """The package's environment; a tampered one is refused and reported as a violation.

        The audit entry is written once per environment change seen by this process (the
        verifier caches its refusal, so every later call is refused without a new entry).
        """
        try:
            return self._envs.find(package)
        except EnvironmentTampered as exc:
            key = (package.digest, exc.path, exc.change)
            with self._cond:
                first = key not in self._tampered_seen
                self._tampered_seen.add(key)
            if first:
                metrics.count_sandbox_violation("environment_tampered")
            if first and self._on_violation is not None:
                reason = f"environment tampered: {exc.path} {exc.change}"
                self._on_violation(
                    Violation(reason=reason, tenant=tenant, package=package.digest, model=model)
                )
            raise

    def _pool(self, digest: str, tenant: str) -> _Pool:
        with self._cond:
            pool = self._pools.get((digest, tenant))
        if pool is not None:
            return pool
        package = self._store.get(digest)
        with self._cond:
            return self._pools.setdefault(
                (digest, tenant),
                _Pool(package, tenant, capacity=package.manifest.resources.concurrency),
            )

    def _launcher(self, mounts: tuple[Path, ...]) -> SandboxLauncher:
        with self._cond:
            launcher = self._launchers.get(mounts)
            if launcher is None:
                launcher = self._launchers[mounts] = self._make_launcher(mounts)
            return launcher

    def _release(self, slot: _Slot) -> None:
        slot.calls += 1
        slot.last_used = self._clock()
        if slot.calls >= self.settings.max_calls_per_worker:
            self._retire(slot, "max calls")
            return
        if not slot.worker.alive:
            self._retire(slot, "died")
            return
        with self._cond:
            if not self._closed and not slot.retired:
                slot.pool.idle.append(slot)
                self._cond.notify()
                return
        self._retire(slot, "closed")

    def _retire(self, slot: _Slot, reason: str) -> None:
        with self._cond:
            if slot.retired:
                return
            slot.retired = True
            self._forget(slot.pool, slot)
        slot.worker.kill()
        self._log_retirement(slot, reason)

    def _forget(self, pool: _Pool, slot: _Slot) -> None:
        pool.live.discard(slot)
        if slot in pool.idle:
            pool.idle.remove(slot)
        self._cond.notify_all()
        metrics.record_sandbox_pool(self._live_workers())

    def _live_workers(self) -> int:
        """Workers alive in every pool (call holding ``_cond``)."""
        return sum(len(pool.live) for pool in self._pools.values())

    def _log_retirement(self, slot: _Slot, reason: str) -> None:
        tags = {
            "tenant": slot.worker.tenant,
            "package": slot.pool.package.digest,
            "model": slot.model,
        }
        _log.info("sandbox_worker_retired", reason=reason, calls=slot.calls, **tags)
        if reason.startswith("limit "):
            metrics.count_sandbox_limit_kill(reason.removeprefix("limit ").split(" ")[0])
        elif reason.startswith("seccomp"):
            metrics.count_sandbox_violation("seccomp")
        if reason.startswith(("limit ", "seccomp")):
            # What the broker can see of a sandbox violation goes to the log and the audit log.
            _log.warning("sandbox_violation", reason=reason, **tags)
            if self._on_violation is not None:
                self._on_violation(Violation(reason=reason, **tags))
        output = slot.worker.output()[-self.settings.output_log_bytes :]
        if output:
            text = output.decode("utf-8", errors="replace")
            # Debug only: vendor code may print payload values (see the module docstring).
            _log.debug("sandbox_worker_output", output=text, bytes=len(output), **tags)


def _require_confined(worker: Worker) -> None:
    """SandboxUnconfined if the worker's cgroup was removed or emptied under it."""
    if not worker.confined():
        raise SandboxUnconfined


def _require_limits_held(worker: Worker) -> None:
    """After a call: raise if the worker's limits did not hold, so the pool retires it and the
    call reports that, whatever the worker answered.

    cgroup v1 OOM-kills one process, not the group: a worker that lost a child to its memory
    limit is killed here and the call reports that limit. A worker whose cgroup vanished during
    the call (see :meth:`WorkerGroup.intact`) ran unbounded: its answer is withheld.
    """
    if worker.oom_killed():
        worker.kill()
        raise SandboxLimitExceeded("memory")
    _require_confined(worker)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, SandboxViolation):
        return "seccomp violation"
    if isinstance(exc, SandboxLimitExceeded):
        return f"limit {exc.limit}"
    if isinstance(exc, SandboxError):
        return type(exc).__name__
    return f"error {type(exc).__name__}"

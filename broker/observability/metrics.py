"""Prometheus metrics: what the broker counts and times, and the page that serves them.

Every series is defined here, once, so an operator reads the whole list in one place (the README
and ``examples/observability/grafana-dashboard.json`` follow it). Label values are names the
broker already knows (method, tenant, model reference, gRPC code, stage, policy label, action,
limit) and never a payload value. Policy labels can come from the buyer, so their values are
bounded: the first :data:`MAX_LABEL_VALUES` distinct ones are kept, later ones count as
``other`` (a hostile caller cannot grow the page without bound).

Several worker processes: prometheus_client's multiprocess mode. The node's supervisor sets
``PROMETHEUS_MULTIPROC_DIR`` before it starts the workers (each then writes its values to
memory-mapped files there) and serves the page, summing the workers' files. The variable must
be set before ``prometheus_client`` is imported, which is why a worker learns it from its
environment, not from its settings.

Cost on the call path: a counter increment or a histogram observation is a few hundred
nanoseconds; label children are bound once, not looked up per call.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final, Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client import multiprocess as prometheus_multiprocess

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
MAX_LABEL_VALUES: Final = 256
_MAX_CHILDREN: Final = 16 * MAX_LABEL_VALUES
_NO_LABEL: Final = ("none",)
OTHER: Final = "other"

#: Latency buckets from 100 µs to 30 s: the broker's own stages take microseconds to
#: milliseconds, a model call seconds.
_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

# -- calls -------------------------------------------------------------------------------------

RPCS: Final = Counter(
    "broker_rpcs",
    "RPCs finished, by method, tenant, model, outcome (ok, refused, failed, cancelled) and code",
    ["method", "tenant", "model", "outcome", "code"],
)
RPC_SECONDS: Final = Histogram(
    "broker_rpc_duration_seconds",
    "Wall time of an RPC from the broker's boundary in to its status out",
    ["method"],
    buckets=_BUCKETS,
)
STAGE_SECONDS: Final = Histogram(
    "broker_stage_duration_seconds",
    "Wall time of one stage of a call (auth, resolve, classify, decide, enforce, audit_intent, "
    "dispatch, restore, audit_outcome)",
    ["stage"],
    buckets=_BUCKETS,
)
POLICY_ACTIONS: Final = Counter(
    "broker_policy_actions",
    "Field decisions applied, by direction (request, response), policy label and action",
    ["direction", "label", "action"],
)
PLAN_CACHE: Final = Counter(
    "broker_plan_cache_lookups", "Policy plan cache lookups, by result (hit, miss)", ["result"]
)

# -- audit log ---------------------------------------------------------------------------------

AUDIT_QUEUE_DEPTH: Final = Gauge(
    "broker_audit_queue_depth",
    "Entries waiting for the audit commit when the last batch was taken",
    multiprocess_mode="livesum",
)
AUDIT_COMMIT_SECONDS: Final = Histogram(
    "broker_audit_commit_duration_seconds",
    "Time to commit one batch of audit entries durably (append latency of the batch)",
    buckets=_BUCKETS,
)
AUDIT_ENTRIES: Final = Counter("broker_audit_entries", "Audit entries committed by this node")
AUDIT_TREE_SIZE: Final = Gauge(
    "broker_audit_tree_size",
    "Entries in the log at the last signed checkpoint",
    multiprocess_mode="max",
)
AUDIT_CHECKPOINT_TIME: Final = Gauge(
    "broker_audit_last_checkpoint_timestamp_seconds",
    "Unix time of the last checkpoint signed (age: time() - this)",
    multiprocess_mode="max",
)

# -- retention ---------------------------------------------------------------------------------

RETENTION_DUE: Final = Gauge(
    "broker_retention_overdue_records",
    "Records still stored past their due time after the last scheduler run (held, or failing)",
    multiprocess_mode="max",
)
RETENTION_DELETED: Final = Counter(
    "broker_retention_deleted", "Retained records destroyed, by reason", ["reason"]
)
RETENTION_FAILED: Final = Counter(
    "broker_retention_failed", "Deletion attempts that failed and will be retried"
)

# -- sandbox -----------------------------------------------------------------------------------

SANDBOX_WORKERS: Final = Gauge(
    "broker_sandbox_workers",
    "Sandbox worker processes alive (idle and busy)",
    multiprocess_mode="livesum",
)
SANDBOX_COLD_STARTS: Final = Counter(
    "broker_sandbox_cold_starts", "Sandbox workers started because none was idle"
)
SANDBOX_LIMIT_KILLS: Final = Counter(
    "broker_sandbox_limit_kills", "Sandbox workers killed at a resource limit", ["limit"]
)
SANDBOX_VIOLATIONS: Final = Counter(
    "broker_sandbox_violations", "Sandbox confinement violations seen", ["kind"]
)
REQUEST_WAITS_ENDED: Final = Counter(
    "broker_request_waits_ended",
    "Calls ended by the sync server for a request message that did not come (stalled calls), "
    "by reason: client_share, server_total, timeout",
    ["reason"],
)


class BoundedValues:
    """Passes the first ``limit`` distinct values through; maps later ones to ``other``."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) >= self._limit:
                return OTHER
            self._seen.add(value)
        return value


_policy_labels = BoundedValues()
_tenants = BoundedValues(4 * MAX_LABEL_VALUES)
_models = BoundedValues(4 * MAX_LABEL_VALUES)


class _State:
    enabled = False


_state = _State()


def enable(enabled: bool = True) -> None:
    """Start counting (the metrics page is served); until then every record is skipped."""
    _state.enabled = enabled


def enabled() -> bool:
    """Whether metrics are being recorded in this process."""
    return _state.enabled


# Label children by their label values: ``labels()`` validates and locks on every call (a few
# µs), a dictionary lookup does not. Bounded like the values themselves.
_rpc_children: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
_action_children: dict[tuple[str, str, str], Any] = {}


def count_rpc(method: str, tenant: str, model: str, code: str, seconds: float) -> None:
    """One finished RPC (called once per RPC by the boundary interceptor)."""
    if _state.enabled:
        key = (method, tenant, model, code)
        children = _rpc_children.get(key)
        if children is None:
            counter = RPCS.labels(method, _tenants(tenant), _models(model), outcome_of(code), code)
            children = (counter, RPC_SECONDS.labels(method))
            if len(_rpc_children) < _MAX_CHILDREN:
                _rpc_children[key] = children
        children[0].inc()
        children[1].observe(seconds)


class FieldDecision(Protocol):
    """What ``count_actions`` reads of a decision (``broker.enforce.enforcer.FieldDecision``)."""

    @property
    def labels(self) -> tuple[str, ...]: ...

    @property
    def action(self) -> str: ...


def count_actions(direction: str, decisions: Iterable[FieldDecision]) -> None:
    """The labels and action of each field decision of one direction of a call.

    Tallied first, so a call of forty fields costs a handful of counter increments.
    """
    if not _state.enabled:
        return
    tally: dict[tuple[str, str], int] = {}
    for decision in decisions:
        for label in decision.labels or _NO_LABEL:
            key = (label, decision.action)
            tally[key] = tally.get(key, 0) + 1
    for (label, action), count in tally.items():
        child = _action_children.get((direction, label, action))
        if child is None:
            child = POLICY_ACTIONS.labels(direction, _policy_labels(label), action)
            if len(_action_children) < _MAX_CHILDREN:
                _action_children[(direction, label, action)] = child
        child.inc(count)


_HIT: Final = PLAN_CACHE.labels("hit")
_MISS: Final = PLAN_CACHE.labels("miss")


def count_plan_lookup(hit: bool) -> None:
    """One lookup in the policy plan cache."""
    if _state.enabled:
        (_HIT if hit else _MISS).inc()


def record_audit_batch(entries: int, queued_after: int, seconds: float) -> None:
    """One committed batch of audit entries, and what was still waiting."""
    if _state.enabled:
        AUDIT_ENTRIES.inc(entries)
        AUDIT_QUEUE_DEPTH.set(queued_after)
        AUDIT_COMMIT_SECONDS.observe(seconds)


def record_checkpoint(size: int, unix_time: float) -> None:
    """A checkpoint signed (or found) at ``size``."""
    if _state.enabled:
        AUDIT_TREE_SIZE.set(size)
        AUDIT_CHECKPOINT_TIME.set(unix_time)


def record_retention_run(overdue: int, deleted: int, failed: int, reason: str = "expired") -> None:
    """One scheduler run: records still overdue after it, destroyed by it, rounds failed."""
    if _state.enabled:
        if not failed:
            RETENTION_DUE.set(overdue)
        if deleted:
            RETENTION_DELETED.labels(reason).inc(deleted)
        if failed:
            RETENTION_FAILED.inc(failed)


def record_erasure(deleted: int) -> None:
    """Records destroyed by an erasure order."""
    if _state.enabled and deleted:
        RETENTION_DELETED.labels("erasure").inc(deleted)


def record_sandbox_pool(workers: int) -> None:
    """The sandbox pool's live worker count in this process."""
    if _state.enabled:
        SANDBOX_WORKERS.set(workers)


def count_sandbox_cold_start() -> None:
    """A sandbox worker started for a call that found none idle."""
    if _state.enabled:
        SANDBOX_COLD_STARTS.inc()


def count_sandbox_limit_kill(limit: str) -> None:
    """A sandbox worker killed at ``limit`` (memory, cpu, time, output...)."""
    if _state.enabled:
        SANDBOX_LIMIT_KILLS.labels(limit).inc()


def count_sandbox_violation(kind: str) -> None:
    """A confinement violation of kind ``kind``."""
    if _state.enabled:
        SANDBOX_VIOLATIONS.labels(kind).inc()


def count_request_wait_ended(reason: str) -> None:
    """A call ended because its request message did not come (``reason``: which bound)."""
    if _state.enabled:
        REQUEST_WAITS_ENDED.labels(reason).inc()


_REFUSED: Final = frozenset(
    {
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "FAILED_PRECONDITION",
        "RESOURCE_EXHAUSTED",
        "UNAUTHENTICATED",
        "OUT_OF_RANGE",
    }
)


def outcome_of(code: str) -> str:
    """``ok``, ``refused`` (the caller's request or rights), ``cancelled`` or ``failed``."""
    if code == "OK":
        return "ok"
    if code in _REFUSED:
        return "refused"
    if code == "CANCELLED":
        return "cancelled"
    return "failed"


# -- the page ----------------------------------------------------------------------------------


def prepare_multiprocess_dir(path: Path) -> None:
    """Make ``path`` the node's fresh multiprocess directory and point this process at it.

    Called by the supervisor before it starts workers; files of an earlier run are removed,
    or their counts would be added to this run's.
    """
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(path)


def mark_worker_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (its counters stay: they were counted)."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        prometheus_multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


class MetricsPage:
    """The HTTP server of ``/metrics`` on ``[metrics] listen`` (host:port)."""

    def __init__(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self._host = host.strip("[]") or "127.0.0.1"
        self._port = int(port)
        self._server: WSGIServer | None = None
        self.port = 0

    def start(self) -> int:
        """Serve the page on a daemon thread; the bound port (``:0`` picks one)."""
        directory = os.environ.get(MULTIPROC_ENV)
        if directory:
            registry = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        else:
            registry = REGISTRY
        server, _thread = start_http_server(self._port, addr=self._host, registry=registry)
        self._server = server
        self.port = int(server.server_address[1])
        return self.port

    def stop(self) -> None:
        """Stop serving."""
        server = self._server
        if server is not None:
            server.shutdown()
            server.server_close()
            self._server = None

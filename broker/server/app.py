"""Assemble and run the broker's gRPC server.

``build_server`` wires configuration, storage, authentication, runtimes and servicers into a
``BrokerServer``; ``BrokerServer.serve_forever`` runs it until SIGTERM or SIGINT, then stops
accepting calls, reports NOT_SERVING to health checks and drains the calls in flight for up to
``server.shutdown_grace_seconds``.

The server is grpcio's synchronous server on a thread pool. ``make bench`` measures both server
models for the same echo service in the same run (section ``server_model``): on these 2-core
machines the 16-thread sync server answered 1.05x the calls/s of ``grpc.aio`` on a quiet
machine and 1.68x on a busy one (2026-11-27), never less. The broker's outbound calls are
blocking gRPC/HTTP calls that release the GIL, so threads suit them, and regorus engines are
bound to the thread that made them, which an event loop would funnel into one thread.
The sync server waits for a call's request message in a pool thread; ``SyncBridge``
(``broker.server.message_wait``) bounds that wait in time and per client address, so stalled
calls cannot hold every thread. ``[server] aio`` (experimental) serves the same synchronous
servicers from a grpc.aio event loop instead (``broker.server.aio``), so that calls waiting for
their request hold no thread at all.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import FrameType

import grpc
import sqlalchemy as sa
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from broker._proto.broker.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    broker_pb2,
    broker_pb2_grpc,
    policies_pb2,
    policies_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    retention_pb2,
    retention_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)
from broker.audit.keys import TenantKeys as AuditDigestKeys
from broker.audit.keys import load_or_create_log_signer
from broker.audit.writer import AuditLog
from broker.auth.tokens import TokenVerifier
from broker.calls.concurrency import TenantConcurrencyLimiter
from broker.calls.decide import Decider
from broker.calls.invoke import Enforcement, Invoker
from broker.calls.late_outcomes import LateOutcomes, outcome_lookup
from broker.calls.payload import PayloadLimits
from broker.calls.stream import Streamer
from broker.config import Config, ConfigError
from broker.enforce.enforcer import Enforcer
from broker.enforce.keys import TenantKeys
from broker.enforce.restore import Restorer
from broker.enforce.vault import TokenVault, vault_tokens
from broker.logging import get_logger
from broker.metering.limits import Quotas, rules_from
from broker.observability import metrics, tracing
from broker.observability.metrics import MetricsPage
from broker.packages.environment import Environments
from broker.packages.store import PackageStore
from broker.policy import (
    OpaEngine,
    PlanCache,
    PolicyEngine,
    PolicyStore,
    RegorusEngine,
    opa_embedded,
)
from broker.policy.bundle import Bundle
from broker.policy.opa_embedded import OpaEmbeddedEngine
from broker.registry.cache import CachedResolver
from broker.registry.generation import ChangeCounter, SharedChangeCounter
from broker.registry.model import ModelVersion, Runtime
from broker.registry.secrets import EndpointSecrets
from broker.registry.store import RegistryStore
from broker.retention.scheduler import ExpiryJob
from broker.retention.setup import Retention, open_retention
from broker.runtimes.base import Runtime as RuntimeClient
from broker.runtimes.oip import OpenInferenceRuntime
from broker.runtimes.oip_mapping import check_registered_mapping
from broker.runtimes.openai import OpenAIRuntime
from broker.runtimes.sandbox.cgroups import configured_cgroups
from broker.runtimes.sandbox.errors import SandboxUnavailable
from broker.runtimes.sandbox.launcher import SandboxLauncher
from broker.runtimes.sandbox.runtime import SandboxRuntime
from broker.runtimes.sandbox.uids import WorkerIds
from broker.server import audit_hooks
from broker.server.aio import LoopServer
from broker.server.audit_service import AuditServicer
from broker.server.broker_service import BrokerServicer
from broker.server.cluster import ClusterSync
from broker.server.db_health import DatabaseHealth
from broker.server.interceptors import BoundaryInterceptor
from broker.server.message_wait import MessageWaits, SyncBridge
from broker.server.policies_service import PoliciesServicer
from broker.server.registry_service import ChangeKind, RegistryServicer
from broker.server.retention_service import RetentionServicer
from broker.server.usage_service import UsageServicer
from broker.storage.changes import is_postgresql
from broker.storage.db import create_engine_for, migrate

_log = get_logger(__name__)

SERVICE_NAMES = (
    broker_pb2.DESCRIPTOR.services_by_name["Broker"].full_name,
    registry_pb2.DESCRIPTOR.services_by_name["Registry"].full_name,
    policies_pb2.DESCRIPTOR.services_by_name["Policies"].full_name,
    retention_pb2.DESCRIPTOR.services_by_name["Retention"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["Audit"].full_name,
    usage_pb2.DESCRIPTOR.services_by_name["Usage"].full_name,
)


def _wake_pipe() -> tuple[int, int]:
    """A pipe whose write end never blocks (as a signal wake-up fd must not)."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(write_end, False)
    return read_end, write_end


@dataclass
class BrokerServer:
    """A built, bound broker server and the resources it owns."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    runtimes: dict[Runtime, RuntimeClient]
    engine: sa.Engine
    policies: PolicyStore
    retention: Retention | None
    audit: AuditLog
    grace_seconds: float
    cluster: ClusterSync | None = None
    database_health: DatabaseHealth | None = None
    metrics_page: MetricsPage | None = None
    #: The node's registry change counter (a mapped file), closed once calls have drained.
    changes: ChangeCounter | None = None
    #: Outcomes the audit log refused, written once it can; a last try before the log closes.
    late_outcomes: LateOutcomes | None = None
    #: The sync server's bounds on calls waiting for their request message (none with aio).
    message_waits: MessageWaits | None = None
    _stopped: threading.Event = field(default_factory=threading.Event)
    # serve_forever sleeps reading this pipe; request_stop and signals write a byte to it.
    # Not an Event, and no logging in a signal handler: a Python handler runs on the main thread
    # between two bytecodes, maybe while that thread holds the Event's (or the logger's) lock,
    # and would deadlock there. The write end is also the process's signal wake-up fd, so a
    # signal the kernel delivers to another thread (grpc's, the pool's) still wakes the main
    # thread, which a blocking read on the main thread alone would miss.
    _stop_pipe: tuple[int, int] = field(default_factory=_wake_pipe)
    _stop_requested: bool = False

    def start(self) -> None:
        """Start serving (and the deletion scheduler); report SERVING to health checks.

        A cluster replica first settles its policy with the cluster's and listens for changes.
        """
        if self.cluster is not None:
            self.cluster.start()
        if self.message_waits is not None:
            self.message_waits.start()
        self.server.start()
        if self.retention is not None:
            self.retention.scheduler.start()
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.database_health is not None:
            self.database_health.start()
        if self.metrics_page is not None:
            _log.info("metrics_started", port=self.metrics_page.start())
        _log.info("server_started", port=self.port)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls and drain those in flight, then release resources."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        _log.info("server_draining", grace_seconds=self.grace_seconds if grace is None else grace)
        self.server.stop(self.grace_seconds if grace is None else grace).wait()
        if self.message_waits is not None:
            self.message_waits.close()
        if self.database_health is not None:
            self.database_health.stop()
        if self.metrics_page is not None:
            self.metrics_page.stop()
        if self.cluster is not None:
            self.cluster.stop()
        for runtime in self.runtimes.values():
            runtime.close()
        self.policies.stop_watching()
        if self.retention is not None:
            self.retention.close()
        if self.late_outcomes is not None:
            self.late_outcomes.close()
        self.audit.close()
        if self.changes is not None:
            self.changes.close()
        self.engine.dispose()
        tracing.shutdown()  # flushes the last spans
        self.request_stop()  # wakes serve_forever if another thread called stop()
        for fd in self._stop_pipe:
            os.close(fd)
        _log.info("server_stopped")

    def request_stop(self) -> None:
        """Make :meth:`serve_forever` drain and return (thread-safe)."""
        self._stop_requested = True
        self._wake()

    def _wake(self) -> None:
        # Full: a wake-up is pending already. Closed: the server has stopped already.
        with contextlib.suppress(OSError):
            os.write(self._stop_pipe[1], b"\0")

    def serve_forever(self, on_started: Callable[[], None] | None = None) -> None:
        """Start, then block until SIGTERM, SIGINT or :meth:`request_stop`; shut down gracefully.

        ``on_started`` runs once the server accepts calls (a node's worker reports in there).
        """

        received: list[int] = []

        def on_signal(signum: int, frame: FrameType | None) -> None:
            received.append(signum)  # handled by the loop below, outside the handler
            # The wake-up fd's byte may have been read before this handler ran: one more.
            self._wake()

        for handled in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(handled, on_signal)
        previous_wakeup = signal.set_wakeup_fd(self._stop_pipe[1], warn_on_full_buffer=False)
        try:
            self.start()
            if on_started is not None:
                on_started()
            while not self._stop_requested:
                try:
                    os.read(self._stop_pipe[0], 512)  # until a signal or request_stop writes
                except OSError:  # closed by a stop() from another thread: stopped
                    break
                while received:
                    got = signal.Signals(received.pop(0))
                    _log.info("signal_received", signal=got.name)
                    if got == signal.SIGHUP:
                        self.policies.request_reload()
                    else:
                        self._stop_requested = True
        finally:
            signal.set_wakeup_fd(previous_wakeup)
        self.stop()


def _start_telemetry(config: Config) -> None:
    """Record metrics when a page will serve them; export traces when a collector is set."""
    if config.metrics.listen is not None:
        metrics.enable()
    if config.tracing.otlp_endpoint is not None:
        tracing.configure(
            config.tracing.otlp_endpoint,
            service_name=config.tracing.service_name,
            sample_ratio=config.tracing.sample_ratio,
        )


def build_server(
    config: Config, *, reuse_port: bool = False, metrics_page: bool = True
) -> BrokerServer:
    """Create every component from ``config`` and bind the listener (port 0 picks a free port).

    ``reuse_port``: bind with ``SO_REUSEPORT``, as each of a node's worker processes does so
    that they share one port (:mod:`broker.server.workers`); a lone server binds without it, so
    a port already in use is an error rather than a silently shared listener.
    ``metrics_page``: serve ``[metrics] listen`` from this process (a worker records metrics
    but leaves the page to its supervisor).
    """
    config.data_dir.mkdir(parents=True, exist_ok=True)
    _start_telemetry(config)
    engine = create_engine_for(config.database_url, echo=config.database.echo)
    if config.database.auto_migrate:
        migrate(engine)
    store = RegistryStore(engine, check=check_registered_mapping)
    resolver = CachedResolver(
        store,
        ttl_seconds=config.registry.resolve_cache_seconds,
        negative_ttl_seconds=config.registry.resolve_cache_negative_seconds,
        max_entries=config.registry.resolve_cache_entries,
        changes=SharedChangeCounter.for_data_dir(config.data_dir),
    )
    verifier = TokenVerifier(config.auth, data_dir=config.key_dir)
    keys = TenantKeys.load_or_create(config.key_dir)
    # An endpoint's API key is cached as its model is: same TTL, same change counter.
    secrets = EndpointSecrets(
        engine, keys, ttl_seconds=config.registry.resolve_cache_seconds, changes=resolver.changes
    )
    audit = build_audit_log(config, engine)
    runtimes = build_runtimes(config, secrets, audit)
    policies = build_policy_store(config, audit)
    vault = TokenVault(engine, keys, ttl_seconds=config.enforcement.token_ttl_seconds)
    retention = open_retention(config, engine, on_deleted=audit_hooks.deletions(audit))
    if retention is not None:
        retention.scheduler.add_job(ExpiryJob("vault", vault_tokens, "expires_at", unit="s"))
    else:
        _log.info("retention_disabled", reason="no [retention] root key configured")
    enforcement = Enforcement(
        decider=Decider(policies, claims=config.policy.claims),
        enforcer=Enforcer(keys),
        vault=vault,
        restorer=Restorer(vault, keys),
    )
    limiter = TenantConcurrencyLimiter(config.limits.tenant_concurrency)
    quotas = Quotas(engine, rules_from(config.metering.quotas))
    late = LateOutcomes(outcome_lookup(engine))
    invoker = Invoker(
        resolver,
        runtimes,
        limiter,
        enforcement,
        audit,
        default_timeout=config.backends.default_timeout_seconds,
        default_purpose=config.policy.default_purpose,
        retention=retention.store if retention is not None else None,
        quotas=quotas,
        late_outcomes=late,
    )
    streamer = Streamer(
        resolver,
        runtimes,
        limiter,
        enforcement,
        keys,
        audit,
        default_timeout=config.backends.default_timeout_seconds,
        default_purpose=config.policy.default_purpose,
        retention=retention.store if retention is not None else None,
        quotas=quotas,
        late_outcomes=late,
    )
    server, message_waits = _grpc_server(
        config, BoundaryInterceptor(verifier.authenticate), reuse_port
    )
    record_change = audit_hooks.registry_changes(audit)
    cluster = (
        ClusterSync(
            engine,
            resolver,
            policies if config.policy.engine != "opa" else None,
            endpoint_keys=secrets,
        )
        if is_postgresql(engine)
        else None
    )

    def on_registry_change(kind: ChangeKind, model: ModelVersion) -> None:
        resolver.invalidate(model.vendor, model.name)  # first: the audit hook may raise
        if cluster is not None:
            cluster.registry_changed(model.vendor, model.name)
        record_change(kind, model)

    broker_pb2_grpc.add_BrokerServicer_to_server(
        BrokerServicer(
            invoker,
            store,
            PayloadLimits.from_config(config.limits),
            log_origin=config.audit.origin,
            streamer=streamer,
        ),
        server,
    )
    registry_pb2_grpc.add_RegistryServicer_to_server(
        RegistryServicer(store, on_change=on_registry_change, secrets=secrets),
        server,
    )
    audit_pb2_grpc.add_AuditServicer_to_server(
        AuditServicer(engine, audit.store, audit.verifier, on_view=audit_hooks.entry_views(audit)),
        server,
    )
    usage_pb2_grpc.add_UsageServicer_to_server(UsageServicer(engine), server)
    policies_pb2_grpc.add_PoliciesServicer_to_server(
        PoliciesServicer(policies, engine=config.policy.engine, rule=config.policy.rule), server
    )
    if retention is not None:
        retention_pb2_grpc.add_RetentionServicer_to_server(
            RetentionServicer(
                retention.store, retention.deleter, on_event=audit_hooks.retention_events(audit)
            ),
            server,
        )
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.server.reflection:
        _enable_reflection(server)
    port = _bind(server, config)
    probe_s = config.server.database_probe_seconds
    database_health = (
        DatabaseHealth(engine, health_servicer, ("", *SERVICE_NAMES), interval_s=probe_s)
        if probe_s > 0
        else None
    )
    return BrokerServer(
        server=server,
        port=port,
        health=health_servicer,
        runtimes=runtimes,
        engine=engine,
        policies=policies,
        retention=retention,
        audit=audit,
        grace_seconds=config.server.shutdown_grace_seconds,
        cluster=cluster,
        database_health=database_health,
        changes=resolver.changes,
        late_outcomes=late,
        message_waits=message_waits,
        metrics_page=(
            MetricsPage(config.metrics.listen)
            if metrics_page and config.metrics.listen is not None
            else None
        ),
    )


def _grpc_server(
    config: Config, boundary: BoundaryInterceptor, reuse_port: bool
) -> tuple[grpc.Server, MessageWaits | None]:
    """grpcio's sync server, or with ``[server] aio`` the same servicers behind a grpc.aio loop.

    The sync server reads every request message through :class:`MessageWaits` (returned, to be
    started and closed with the server): a call waiting for its message holds a thread there.
    """
    pool = ThreadPoolExecutor(max_workers=config.server.max_workers, thread_name_prefix="rpc")
    options = [
        ("grpc.max_receive_message_length", config.server.max_message_bytes),
        ("grpc.max_send_message_length", config.server.max_message_bytes),
        ("grpc.max_metadata_size", config.server.max_metadata_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]
    if config.server.aio:
        # Stalled calls hold no thread here, only memory (a few KB each): the limit on open
        # calls is 8x the limit on running ones, which stays the sync server's.
        aio = LoopServer(
            pool,
            boundary,
            options=options,
            max_running=config.server.max_workers * 8,
            max_open=config.server.max_workers * 64,
            message_timeout=config.server.request_message_timeout_seconds,
            max_waiting_per_client=config.server.max_waiting_per_client,
        )
        return aio, None
    waits = MessageWaits(
        share=config.server.sync_waiting_share,
        total=config.server.sync_waiting_total,
        timeout=config.server.request_message_timeout_seconds,
    )
    server = grpc.server(
        pool,
        interceptors=[SyncBridge(boundary, waits)],
        options=options,
        maximum_concurrent_rpcs=config.server.max_workers * 8,
    )
    return server, waits


def _enable_reflection(server: grpc.Server) -> None:
    names = (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME)
    if isinstance(server, LoopServer):  # grpc's asynchronous reflection: no thread per stream
        server.call_in_loop(lambda: reflection.enable_server_reflection(names, server.aio))
    else:
        reflection.enable_server_reflection(names, server)


def build_runtimes(
    config: Config, secrets: EndpointSecrets, audit: AuditLog
) -> dict[Runtime, RuntimeClient]:
    """One client per runtime kind; the sandbox only where the kernel can build it."""
    runtimes: dict[Runtime, RuntimeClient] = {
        Runtime.OPEN_INFERENCE_GRPC: OpenInferenceRuntime(config.backends),
        Runtime.OPENAI_HTTP: OpenAIRuntime(config.backends, secrets=secrets.lookup),
    }
    box = config.sandbox
    ids = WorkerIds(box.worker_uid_base, box.worker_uid_count, lock_dir=box.worker_uid_lock_dir)
    cgroups = configured_cgroups(box.cgroups)
    try:
        runtimes[Runtime.SANDBOX] = SandboxRuntime(
            PackageStore(config.data_dir),
            Environments(config.data_dir / "envs"),
            launcher_factory=lambda dirs: SandboxLauncher(
                env_dirs=dirs, worker_ids=ids, cgroups=cgroups, zygote=box.zygote
            ),
            on_violation=audit_hooks.sandbox_violations(audit),
        )
    except SandboxUnavailable as exc:
        # Never run a sandbox model unsandboxed: its calls get FAILED_PRECONDITION instead.
        _log.warning("sandbox_unavailable", missing=list(exc.missing))
    return runtimes


def build_audit_log(config: Config, engine: sa.Engine) -> AuditLog:
    """Open the audit log (keys under ``config.key_dir``) and start its writer threads."""
    audit = AuditLog(
        engine,
        signer=load_or_create_log_signer(config.key_dir, config.audit.origin),
        origin=config.audit.origin,
        tenant_keys=AuditDigestKeys.load_or_create(config.key_dir),
        batch_ms=config.audit.batch_ms,
        batch_max=config.audit.batch_max,
    )
    audit.start()
    return audit


def build_policy_store(config: Config, audit: AuditLog | None = None) -> PolicyStore:
    """Load the policy bundle (refusing to start if it does not load) and watch it.

    With ``audit``, every activated revision (the first one too) is recorded.
    """
    settings = config.policy

    def opa_engine(bundle: Bundle) -> PolicyEngine:
        token = os.environ.get(settings.opa_token_env) if settings.opa_token_env else None
        return OpaEngine(
            host=settings.opa_host,
            port=settings.opa_port,
            rule=settings.rule,
            revision=settings.opa_revision,
            timeout_s=settings.opa_timeout_seconds,
            token=token,
            ssl=settings.opa_tls,
        )

    def regorus_engine(bundle: Bundle) -> PolicyEngine:
        return RegorusEngine(bundle, rule=settings.rule)

    def opa_embedded_engine(bundle: Bundle) -> PolicyEngine:
        return OpaEmbeddedEngine(bundle, rule=settings.rule)

    factories = {"regorus": regorus_engine, "opa-embedded": opa_embedded_engine, "opa": opa_engine}
    if settings.engine == "opa-embedded":
        problem = opa_embedded.bindings_problem()
        if problem is not None:
            raise ConfigError(f'[policy] engine = "opa-embedded" cannot run: {problem}')
    store = PolicyStore(
        settings.bundle_dir,
        engine_factory=factories[settings.engine],
        cache=PlanCache(max_entries=settings.cache_size),
    )
    if audit is not None:
        store.on_activated(audit_hooks.policy_activations(audit))
    outcome = store.reload()
    if outcome.status == "failed":
        raise ConfigError(
            f"the policy bundle in {settings.bundle_dir} does not load: {outcome.error}"
        )
    _log.info("policy_loaded", revision=outcome.revision, engine=settings.engine)
    if settings.watch_interval_seconds > 0:
        store.start_watching(settings.watch_interval_seconds)
    return store


def _bind(server: grpc.Server, config: Config) -> int:
    tls = config.server.tls
    if tls is None:
        port = server.add_insecure_port(config.server.listen)
    else:
        client_ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
        credentials = grpc.ssl_server_credentials(
            [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )
        port = server.add_secure_port(config.server.listen, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {config.server.listen}: address in use or invalid")
    return port

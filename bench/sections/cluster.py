"""Replicas behind the balancer, and the audit integrator with several writers, on PostgreSQL.

``cluster`` starts one cluster the way ``broker cluster up`` does (``broker.cluster.launcher``:
3 replicas of one process each, mutual TLS, HAProxy with the gRPC health check) on a throwaway
PostgreSQL database, registers the workload's model through the balancer, and then, in every
repeat, takes 1, then 2, then 3 replicas into HAProxy's rotation (the others are set to
maintenance on its runtime API, so they receive nothing) and measures through the balancer:

- *throughput*: closed loop, the hops section's workload and callers (``--concurrency``);
- *CPU per call*: user + system CPU of the replicas in rotation and of HAProxy, from /proc,
  over ``--cpu-calls`` calls. On a machine with fewer cores than processes, throughput cannot
  grow with replicas; CPU per call says what each call costs the cluster.

Ratios against 1 replica are taken within a repeat, so a shared machine's drift hits both sides.

The integrator figure: ``bench.audit_writer`` processes (1, then 3) append to one durable log
in a throwaway PostgreSQL database with ``--concurrency`` threads each, and the bench counts the
log's growth (leaves integrated per second) over ``--duration``. All of them take the one
integrator lock in turn (``broker.audit.store``), so 3 writers show what contention costs and
group commit buys back. PostgreSQL is the server at ``BROKER_BENCH_PG_URL`` (as in the audit
section); without it, or without HAProxy, the section is "not available".
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench import workload
from bench.load import Call, check_answers, closed_loop, fixed_count
from bench.procs import spawn, tree_cpu_seconds
from bench.sections import NotAvailable, Section
from bench.sections.audit import POSTGRES, available_backends, temporary_database
from bench.settings import Settings
from bench.stats import Figure
from bench.topology import INVOKE, TOKEN_TTL_SECONDS

if TYPE_CHECKING:  # imported lazily at run time: the section must load without them
    from broker.audit.store import AuditStore
    from broker.cluster.launcher import Cluster

REPLICAS = 3
_ROOT = Path(__file__).resolve().parents[2]


def run(settings: Settings) -> list[Figure]:
    """Both halves: replicas behind the balancer, then the integrator with 1 and 3 writers."""
    if shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists():
        raise NotAvailable("haproxy is not installed (make system-deps)")
    if POSTGRES not in available_backends():
        raise NotAvailable("no PostgreSQL server at BROKER_BENCH_PG_URL")
    return [*_replicas(settings), *_integrator(settings)]


# -- replicas behind the balancer -------------------------------------------------------------


def _replicas(settings: Settings) -> list[Figure]:
    from broker.cluster.launcher import Cluster, ClusterSettings  # noqa: PLC0415
    from broker.demo.child import free_port  # noqa: PLC0415

    s = settings
    counts = range(1, REPLICAS + 1)
    tput = {
        n: Figure(
            f"throughput, {n} replica{'s' if n > 1 else ''} behind HAProxy",
            "calls/s",
            note=f"closed loop, {s.concurrency} callers, hops workload",
        )
        for n in counts
    }
    cpu = {
        n: Figure(
            f"CPU per call, {n} replica{'s' if n > 1 else ''} + HAProxy",
            "µs/call",
            note=f"/proc utime+stime of the replicas in rotation and HAProxy, {s.cpu_calls} calls",
        )
        for n in counts
    }
    balancer_cpu = {
        n: Figure(
            f"CPU per call, HAProxy alone, {n} replica{'s' if n > 1 else ''}",
            "µs/call",
            note="part of the figure above",
        )
        for n in counts
    }
    ratio = {
        n: Figure(f"throughput ratio {n} replicas / 1 replica", "x", note="within a repeat")
        for n in counts
        if n > 1
    }
    cpu_ratio = {
        n: Figure(f"CPU per call ratio {n} replicas / 1 replica", "x", note="within a repeat")
        for n in counts
        if n > 1
    }
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-cluster-")))
        backend = spawn(stack, workdir, "backend")
        db = stack.enter_context(temporary_database(POSTGRES))
        cluster = Cluster(
            ClusterSettings(
                root=workdir / "cluster",
                replicas=REPLICAS,
                front=f"127.0.0.1:{free_port()}",
                replica_port=0,
                database_url=db.url,
                overrides={"server": {"shutdown_grace_seconds": 1.0}},
            )
        )
        stack.callback(cluster.stop)
        cluster.start()
        call = Call(
            cluster.settings.front,
            INVOKE,
            workload.invoke_request_bytes(),
            (("authorization", f"Bearer {_register(cluster, backend.target)}"),),
        )
        for _ in range(s.repeat):
            got: dict[int, tuple[float, float]] = {}
            for n in counts:
                _rotation(cluster, n)
                result = closed_loop(
                    call, concurrency=s.concurrency, duration=s.duration, warmup=s.warmup
                )
                check_answers([result], f"throughput, {n} replicas")
                haproxy = cluster.children["haproxy"].pid
                pids = [haproxy, *(cluster.replica(i).pid for i in range(1, n + 1))]
                before, before_haproxy = tree_cpu_seconds(*pids), tree_cpu_seconds(haproxy)
                counted = fixed_count(
                    call, count=s.cpu_calls, concurrency=max(1, s.concurrency // 2)
                )
                spent = tree_cpu_seconds(*pids) - before
                balancer_cpu[n].add(
                    (tree_cpu_seconds(haproxy) - before_haproxy) / s.cpu_calls * 1e6
                )
                check_answers([counted], f"cpu, {n} replicas")
                got[n] = (result.throughput, spent / s.cpu_calls * 1e6)
                tput[n].add(got[n][0])
                cpu[n].add(got[n][1])
            for n, figure in ratio.items():
                figure.add(got[n][0] / got[1][0])
                cpu_ratio[n].add(got[n][1] / got[1][1])
    return [
        *tput.values(),
        *ratio.values(),
        *cpu.values(),
        *cpu_ratio.values(),
        *balancer_cpu.values(),
    ]


def _register(cluster: Cluster, backend_target: str) -> str:
    """Register the workload's model through the balancer; return a buyer token."""
    from broker.auth.dev_issuer import DevIssuer  # noqa: PLC0415
    from broker.client import BrokerClient  # noqa: PLC0415
    from broker.config import DevIssuerConfig  # noqa: PLC0415

    issuer = DevIssuer(cluster.settings.keys_dir, DevIssuerConfig(enabled=True))
    vendor = issuer.mint(
        subject="bench-vendor-svc",
        tenant=workload.VENDOR_TENANT,
        roles=["vendor"],
        ttl_seconds=TOKEN_TTL_SECONDS,
    )
    with BrokerClient(cluster.settings.front, token=vendor) as client:
        client.register_model(workload.model(backend_target))
    return issuer.mint(
        subject="bench-buyer-svc",
        tenant=workload.BUYER_TENANT,
        roles=["buyer"],
        ttl_seconds=TOKEN_TTL_SECONDS,
    )


def _rotation(cluster: Cluster, replicas: int, timeout: float = 30.0) -> None:
    """Replicas 1..``replicas`` in HAProxy's rotation, the others in maintenance."""
    for index in range(1, REPLICAS + 1):
        state = "ready" if index <= replicas else "maint"
        _admin(cluster.settings.stats_socket, f"set server replicas/replica-{index} state {state}")
    want = {f"replica-{i}": ("UP" if i <= replicas else "MAINT") for i in range(1, REPLICAS + 1)}
    deadline = time.monotonic() + timeout
    while cluster.balancer_states() != want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"HAProxy states {cluster.balancer_states()}, wanted {want}")
        time.sleep(0.1)


def _admin(stats_socket: Path, command: str) -> str:
    """One command on HAProxy's runtime API; its answer (empty when it succeeded)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5)
        conn.connect(str(stats_socket))
        conn.sendall(command.encode() + b"\n")
        answer = b""
        while chunk := conn.recv(4096):
            answer += chunk
    text = answer.decode("utf-8", "replace").strip()
    if text:
        raise RuntimeError(f"HAProxy refused {command!r}: {text}")
    return text


# -- the integrator with several writers ------------------------------------------------------


def _integrator(settings: Settings) -> list[Figure]:
    s = settings
    writers = (1, REPLICAS)
    rate = {
        w: Figure(
            f"postgresql: audit entries/s integrated, {w} writer process{'es' if w > 1 else ''}",
            "entries/s",
            note=f"{s.concurrency} appending threads each, one log, group commit",
        )
        for w in writers
    }
    ratio = Figure(f"integrator ratio {REPLICAS} writers / 1 writer", "x", note="within a repeat")
    with temporary_database(POSTGRES) as db, tempfile.TemporaryDirectory() as keys:
        from bench.audit_writer import ORIGIN  # noqa: PLC0415
        from broker.audit.keys import TenantKeys, load_or_create_log_signer  # noqa: PLC0415
        from broker.audit.store import AuditStore  # noqa: PLC0415

        load_or_create_log_signer(Path(keys), ORIGIN)  # made once, then shared by every writer
        TenantKeys.load_or_create(Path(keys))
        store = AuditStore(db.engine)
        for _ in range(s.repeat):
            got = {}
            for w in writers:
                got[w] = _entries_per_second(store, db.url, Path(keys), w, s)
                rate[w].add(got[w])
            ratio.add(got[REPLICAS] / got[1])
    return [*rate.values(), ratio]


def _entries_per_second(
    store: AuditStore, url: str, keys: Path, writers: int, settings: Settings
) -> float:
    """Leaves integrated per second while ``writers`` processes append (after a warm-up)."""
    size = store.size
    procs = [
        subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "bench.audit_writer", url, str(keys), str(settings.concurrency)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=_ROOT,
            env=dict(os.environ),
            start_new_session=True,
        )
        for _ in range(writers)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"ready":
                raise RuntimeError(f"audit writer exited ({proc.wait()})")
        time.sleep(settings.warmup)
        before, t0 = size(), time.perf_counter()
        time.sleep(settings.duration)
        after, elapsed = size(), time.perf_counter() - t0
    finally:
        for proc in procs:
            assert proc.stdin is not None
            with contextlib.suppress(OSError):
                proc.stdin.close()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
    return float(after - before) / elapsed


SECTION = Section(
    key="cluster",
    title="cluster: replicas behind HAProxy, audit integrator with several writers",
    requires=("broker.cluster.launcher", "broker.audit.store"),
    run=run,
)

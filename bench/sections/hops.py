"""Direct call vs bare proxy hop vs full broker: throughput, latency, CPU per call.

Within each repeat the three paths run one after the other with the same settings, and the
ratios (broker/proxy throughput, broker-proxy p50) are taken within a repeat, so slow drift of
a shared machine affects both sides of a ratio alike.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from bench import topology
from bench.load import check_answers, closed_loop, fixed_count, open_loop
from bench.sections import Section
from bench.settings import Settings
from bench.stats import Figure

PATHS = ("direct", "proxy", "broker")
_LABEL = {"direct": "(a) direct", "proxy": "(b) proxy", "broker": "(c) broker"}


def run(settings: Settings) -> list[Figure]:
    """Start the topology once and take every figure ``settings.repeat`` times."""
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        topo = topology.start(stack, workdir)
        return _measure(topo, settings)


def _measure(topo: topology.Topology, settings: Settings) -> list[Figure]:
    s = settings
    c = s.concurrency
    tput = {
        p: Figure(f"throughput {_LABEL[p]}", "calls/s", note=f"closed loop, {c} callers")
        for p in PATHS
    }
    p50 = {
        (p, r): Figure(f"p50 {_LABEL[p]} @ {r:g}/s", "ms", note="open loop")
        for p in PATHS
        for r in s.rates
    }
    p99 = {
        (p, r): Figure(f"p99 {_LABEL[p]} @ {r:g}/s", "ms", note="open loop")
        for p in PATHS
        for r in s.rates
    }
    cpu = {
        p: Figure(
            f"CPU per call, {topo.server_of(p).role} process {_LABEL[p]}",
            "µs/call",
            note=f"/proc utime+stime over {s.cpu_calls} calls",
        )
        for p in PATHS
    }
    failed = {
        (p, r): Figure(f"failed calls {_LABEL[p]} @ {r:g}/s", "%", note="latencies: answered only")
        for p in PATHS
        for r in s.rates
    }
    ratio = Figure("throughput ratio c/b (broker/proxy)", "x", note="target >= 0.8")
    hop = {r: Figure(f"p50 added by the proxy hop b-a @ {r:g}/s", "ms") for r in s.rates}
    added = {
        r: Figure(f"p50 added by the broker c-b @ {r:g}/s", "ms", note="target <= 0.3 ms")
        for r in s.rates
    }

    for _ in range(s.repeat):
        got = {}
        for p in PATHS:
            result = closed_loop(topo.calls[p], concurrency=c, duration=s.duration, warmup=s.warmup)
            check_answers([result], f"throughput {p}")
            got[p] = result.throughput
            tput[p].add(result.throughput)
        ratio.add(got["broker"] / got["proxy"])
        for r in s.rates:
            med = {}
            for p in PATHS:
                result = open_loop(
                    topo.calls[p], rate=r, duration=s.latency_duration, warmup=s.warmup
                )
                # Above saturation the broker sheds load (RESOURCE_EXHAUSTED): a result, not a
                # failure of the bench, so it is reported as a failure rate beside the latencies.
                failed[p, r].add(100 * result.errors / max(1, result.ok + result.errors))
                med[p] = result.latency_ms(0.50)
                p50[p, r].add(med[p])
                p99[p, r].add(result.latency_ms(0.99))
            hop[r].add(med["proxy"] - med["direct"])
            added[r].add(med["broker"] - med["proxy"])
        for p in PATHS:
            server = topo.server_of(p)
            before = server.cpu_seconds()
            result = fixed_count(topo.calls[p], count=s.cpu_calls, concurrency=max(1, c // 2))
            spent = server.cpu_seconds() - before
            check_answers([result], f"cpu {p}")
            cpu[p].add(spent / s.cpu_calls * 1e6)

    return [
        *tput.values(),
        ratio,
        *(
            f
            for r in s.rates
            for f in (
                *(p50[p, r] for p in PATHS),
                *(p99[p, r] for p in PATHS),
                *(failed[p, r] for p in PATHS),
            )
        ),
        *hop.values(),
        *added.values(),
        *cpu.values(),
    ]


SECTION = Section(
    key="hops",
    title="direct vs proxy hop vs broker",
    requires=("broker.server.app", "broker.auth.dev_issuer"),
    run=run,
)
